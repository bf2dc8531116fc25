"""Prometheus alert rules rendered for a bundle (``python -m deploy.alerts.render``)."""
