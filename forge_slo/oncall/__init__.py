"""On call at a glance: the SLO status page (``forge-slo ui``) and the error-budget report (``forge-slo report``).

Both read the compiled recording rules and alerts from Prometheus; neither changes anything.
"""
