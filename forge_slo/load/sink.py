"""Where records end up on the master (or the only process): ``records.jsonl``, metrics, live figures.

No Locust and no gevent here: the controller calls :meth:`RecordSink.flush` on its own schedule.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from forge_slo.load.judge import Criterion, LiveJudge
from forge_slo.load.metrics import LoadMetrics
from forge_slo.load.stream import record_json
from forge_slo.sources.records import RequestRecord, iter_records

RATE_WINDOW_S = 5.0


class LiveStage:
    """Running figures of the current stage for the progress display (``ok``, ``failed``, rates and TTFT cover
    measured requests; warm-up requests are counted apart) and, for a search, its SLOs' attainment so far."""

    def __init__(self, name: str, criteria: Sequence[Criterion] = ()) -> None:
        self.name = name
        self.judge = LiveJudge(criteria)
        self.ok = 0
        self.failed = 0
        self.warmup = 0
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.ttft: list[float] = []
        self.output_tokens = 0
        self.done_times: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, record: RequestRecord, now: float) -> None:
        if record.warmup:
            self.warmup += 1
            return
        if self.judge.criteria:
            self.judge.add(record)
        if record.ok:
            self.done_times.append((now, record.output_tokens or 0))
            self.ok += 1
            self.output_tokens += record.output_tokens or 0
            if record.ttft_s is not None:
                self.ttft.append(record.ttft_s)
        else:
            self.failed += 1
            self.by_kind[record.error_kind or "other"] += 1

    def rates(self, now: float) -> tuple[float, float]:
        """Successful requests (served) and their output tokens per second, over the last few seconds."""
        q = self.done_times
        while q and q[0][0] < now - RATE_WINDOW_S:
            q.popleft()
        if not q:
            return 0.0, 0.0
        span = max(now - q[0][0], 1.0) if len(q) > 1 else RATE_WINDOW_S
        span = min(span, RATE_WINDOW_S)
        return len(q) / span, sum(t for _, t in q) / span

    def ttft_percentiles(self) -> tuple[float | None, float | None]:
        if not self.ttft:
            return None, None
        p = np.percentile(np.asarray(self.ttft), (50, 99))
        return float(p[0]), float(p[1])


class RecordSink:
    """Appends records to ``records.jsonl`` (when given a path), feeds metrics and live figures.

    Records are not kept in memory: a long run would hold millions of objects, and every full garbage
    collection that walks them pauses the event loop (and so the timing of every stream). The records of a
    stage are read back from the file when the stage is judged.
    """

    def __init__(self, path: Path | None, metrics: LoadMetrics | None = None, keep: bool = False,
                 criteria: Sequence[Criterion] = ()) -> None:
        self.path = path
        self._file: TextIO | None = path.open("w", encoding="utf-8") if path is not None else None
        self.metrics = metrics
        self.count = 0
        self.keep = keep and path is None  # without a file, the stage's records stay in memory instead
        self._kept: list[RequestRecord] = []
        self._stage_offset = 0
        self.criteria = tuple(criteria)
        self.live = LiveStage("")
        self.closed = False

    def start_stage(self, name: str) -> None:
        self._kept = []
        if self._file is not None:
            self._file.flush()
            self._stage_offset = self._file.tell()
        self.live = LiveStage(name, self.criteria)

    def stage_records(self) -> list[RequestRecord]:
        """Every record of the current stage (read back from the file)."""
        if self.path is None or self._file is None:
            return list(self._kept)
        self._file.flush()
        with self.path.open(encoding="utf-8") as handle:
            handle.seek(self._stage_offset)
            stage = self.live.name
            return [r for r in iter_records(handle, str(self.path)) if r.stage == stage]

    def add(self, record: RequestRecord, line: str | None = None) -> None:
        if self.closed:
            return
        if self._file is not None:
            self._file.write((line if line is not None else record_json(record)) + "\n")
        self.count += 1
        if self.metrics is not None:
            self.metrics.observe(record)
        if record.stage == self.live.name:
            self.live.add(record, time.monotonic())
            if self.keep:
                self._kept.append(record)

    def add_lines(self, lines: Iterable[str], source: str) -> None:
        """Records sent by a worker as JSON lines (checked like any records file)."""
        lines = list(lines)
        for record, line in zip(iter_records(lines, source), lines, strict=True):
            self.add(record, line)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None
        self.closed = True

    def live_view(self) -> dict[str, Any]:
        now = time.monotonic()
        rps, tps = self.live.rates(now)
        p50, p99 = self.live.ttft_percentiles()
        return {"stage": self.live.name, "ok": self.live.ok, "failed": self.live.failed, "warmup": self.live.warmup,
                "by_kind": dict(self.live.by_kind), "requests_per_s": rps, "tokens_per_s": tps,
                "ttft_p50": p50, "ttft_p99": p99, "records": self.count}
