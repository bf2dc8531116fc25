"""deltagate model side: CLIP loading, prompt learner, scores, scoring module, bundles.

This package is light enough for the service to import. Everything that only the offline
module needs (data, training, evaluation, export) lives in :mod:`models.train`.
"""
