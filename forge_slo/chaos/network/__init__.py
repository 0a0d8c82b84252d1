"""Chaos Toolkit activities: network."""
