"""forge-slo: make the reliability of LLM inference and training clusters measurable and enforceable."""

__version__ = "0.1.0"
