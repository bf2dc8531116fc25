"""Offline module: data, EBM/CoOp fine-tuning, calibration fitting, evaluation, export.

Reads the user's data (:mod:`models.train.data.folders`); the proxy research (synthetic world, tiny
CLIP, evidence) lives apart in :mod:`proxy`, which may import this package, never the other way.
Never imported by the service (``tests/unit/test_layering.py``).
"""
