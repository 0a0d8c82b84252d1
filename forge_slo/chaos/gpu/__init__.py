"""Chaos Toolkit activities: gpu."""
