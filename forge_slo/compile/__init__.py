"""Pure compilers from specs to artifacts (rules, promtool tests, dashboards)."""
