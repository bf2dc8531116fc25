"""Capacity model: per-pod service times from ``deltagate bench`` and an autoscaling simulation."""
