"""Deployment tooling (Kubernetes, alert rules, capacity model). Not installed with the package:
run from the repository root, e.g. ``python -m deploy.capacity.simulate``."""
