"""forge-slo: make the reliability of LLM inference and training clusters measurable and enforceable."""

__version__ = "0.1.0"


def discover(discover_system: bool = True) -> dict[str, object]:
    """Chaos Toolkit's entry point: ``chaos discover --no-install forge-slo`` lists forge-slo's activities."""
    from forge_slo.chaos import discover as chaos_discover

    result: dict[str, object] = chaos_discover(discover_system)
    return result
