"""Chaos Toolkit activities: inference."""
