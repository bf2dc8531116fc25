"""Third-party log noise, quiet unless the log level is debug (the CLI and the service both call this).

open_clip logs its progress on the *root* logger (``logging.info(...)``: nine ``INFO root:`` lines
per model built, and a warning when a model has random weights, which deltagate says itself, see
:mod:`models.quality`); the ONNX exporter's libraries log and warn about internals a user cannot act
on. Below ``debug`` these are dropped; at ``debug`` everything is shown.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["THIRD_PARTY_LOGGERS", "quiet_third_party_logs"]

# Loggers whose records below ERROR are noise for a user of deltagate.
THIRD_PARTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "httpx", "huggingface_hub", "matplotlib", "PIL")
_NOISY_WARNING_MODULES = r"(onnxscript|onnx_ir|torch\.onnx|onnxruntime\.quantization)(\.|$)"


class _OpenClipOnRoot(logging.Filter):
    """Drops records that open_clip emits on the root logger below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_open_clip = "open_clip" in record.pathname.replace("\\", "/").split("/")
        return not (from_open_clip and record.levelno < logging.ERROR)


def quiet_third_party_logs(level: str) -> None:
    """Quiet :data:`THIRD_PARTY_LOGGERS`, open_clip's root-logger lines and the exporter's Python warnings,
    unless ``level`` is debug. Idempotent: a later call with another level undoes or redoes it."""
    debug = level.lower() == "debug"
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.ERROR)
    root = logging.getLogger()
    for old in [f for f in root.filters if isinstance(f, _OpenClipOnRoot)]:
        root.removeFilter(old)
    if not debug:
        root.addFilter(_OpenClipOnRoot())
        warnings.filterwarnings("ignore", module=_NOISY_WARNING_MODULES)
