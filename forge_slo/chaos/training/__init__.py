"""Chaos Toolkit activities: training."""
