"""The live display of a running load test: rich on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

PLAIN_INTERVAL_S = 5.0
RICH_INTERVAL_S = 0.5


class LiveSource(Protocol):
    """What the display reads: the controller of the run."""

    started_at: float | None
    finalized: bool

    def live(self) -> dict[str, Any]: ...


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.0f}m"


def where(view: dict[str, Any]) -> str:
    """``stage 2/4 rate=4, 12s left (run 52s)``; a search's stages are not known ahead: ``stage 3 of a search``."""
    if not view.get("stage"):
        return "starting"
    number, total = view.get("stage_number") or 0, view.get("stages_total")
    which = f"stage {number}/{total}" if total else f"stage {number} (search)"
    left = view.get("stage_left_s")
    text = f"{which} {view['stage']}"
    if left is not None:
        if left > 0:
            text += f", {_secs(left)} left"
        else:  # a search stage sends on while its verdict is not yet sure; then every stage drains
            text += ", sending on until sure" if view.get("stage_sending") else ", draining"
    if view.get("run_left_s") is not None and total and number < total:
        text += f" (run {_secs(view['run_left_s'])})"
    return text


def plain_line(view: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(view["by_kind"].items()))
    errors = f"{view['failed']} ({kinds})" if view["failed"] else "0"
    warm = f" (+{view['warmup']} warm-up)" if view.get("warmup") else ""
    return (f"[{view['elapsed']:6.1f}s] {where(view):<38} ok {view['ok']:<6}{warm} "
            f"sent/s {view.get('sent_per_s', 0.0):6.2f}  served/s {view['requests_per_s']:6.2f}  "
            f"tok/s {view['tokens_per_s']:8.1f}  "
            f"TTFT p50 {_ms(view['ttft_p50'])} p99 {_ms(view['ttft_p99'])}  in flight {view['in_flight']:<4} "
            f"errors {errors}")


def _rich_table(view: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="forge-slo load", title_justify="left", show_header=True, header_style="bold")
    for name in ("elapsed", "stage", "ok", "warm-up", "sent/s", "served/s", "tok/s", "TTFT p50", "TTFT p99",
                 "in flight", "errors"):
        table.add_column(name, justify="right" if name not in ("stage", "errors") else "left")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(view["by_kind"].items()))
    errors = f"[red]{view['failed']}[/red] ({kinds})" if view["failed"] else "0"
    table.add_row(f"{view['elapsed']:.1f}s", where(view), str(view["ok"]), str(view.get("warmup", 0)),
                  f"{view.get('sent_per_s', 0.0):.2f}", f"{view['requests_per_s']:.2f}", f"{view['tokens_per_s']:.1f}",
                  _ms(view["ttft_p50"]),
                  _ms(view["ttft_p99"]), str(view["in_flight"]), errors)
    return table


def run_display(source: LiveSource, mode: str, sleep: Any) -> None:
    """Show the run until it is finalized; ``sleep`` is gevent's (the display runs in a greenlet)."""
    if mode == "off":
        return
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    if mode == "rich":
        from rich.live import Live

        with Live(_rich_table(_view(source)), auto_refresh=False, transient=False) as live:
            while not source.finalized:
                sleep(RICH_INTERVAL_S)
                live.update(_rich_table(_view(source)), refresh=True)
        return
    last = time.monotonic()
    while not source.finalized:
        sleep(0.25)
        if time.monotonic() - last >= PLAIN_INTERVAL_S and not source.finalized:
            last = time.monotonic()
            print(plain_line(_view(source)), flush=True)


def _view(source: LiveSource) -> dict[str, Any]:
    view = dict(source.live())
    view["elapsed"] = time.time() - source.started_at if source.started_at else 0.0
    return view
