"""Third-party log noise is quiet unless the level is debug."""

from __future__ import annotations

import logging
import warnings

import pytest

from models.log_noise import quiet_third_party_logs

pytestmark = pytest.mark.unit


def _open_clip_record(level: int) -> logging.LogRecord:
    return logging.LogRecord("root", level, "/site-packages/open_clip/factory.py", 1, "Loaded built-in config.",
                             None, None)


def test_open_clip_root_lines_and_exporter_loggers_only_at_debug() -> None:
    root = logging.getLogger()
    try:
        quiet_third_party_logs("info")
        assert not root.filter(_open_clip_record(logging.INFO))
        assert not root.filter(_open_clip_record(logging.WARNING))
        assert root.filter(_open_clip_record(logging.ERROR))
        assert root.filter(logging.LogRecord("root", logging.INFO, "/repo/models/x.py", 1, "ours", None, None))
        assert not logging.getLogger("onnxscript").isEnabledFor(logging.WARNING)
        quiet_third_party_logs("debug")
        assert root.filter(_open_clip_record(logging.INFO))
        assert logging.getLogger("onnxscript").level == logging.NOTSET  # as the root logger says
    finally:
        quiet_third_party_logs("debug")  # leave logging as pytest set it up


def test_exporter_python_warnings_are_ignored_below_debug() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_logs("warning")
        warnings.warn_explicit("internal detail", UserWarning, "onnxscript/x.py", 1, module="onnxscript.x")
        warnings.warn_explicit("a user's warning", UserWarning, "models/x.py", 1, module="models.x")
    assert [str(w.message) for w in caught] == ["a user's warning"]
