"""Chaos Toolkit activities: process."""
