"""Offline module: data, EBM/CoOp fine-tuning, calibration fitting, evaluation, export.

Never imported by the service (a test checks this).
"""
