"""Load testing of OpenAI-compatible servers with Locust, judged against SLO specs.

``forge-slo load`` (or ``python -m forge_slo.load``) runs it: :mod:`forge_slo.load.command` holds the flags
and the run, :mod:`forge_slo.load.user` the Locust side (import it only in a process that runs Locust:
Locust monkey-patches the standard library with gevent). This package imports nothing on its own, so the
CLI can add the flags cheaply.
"""
