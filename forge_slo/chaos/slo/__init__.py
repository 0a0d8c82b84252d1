"""Chaos Toolkit activities: slo."""
