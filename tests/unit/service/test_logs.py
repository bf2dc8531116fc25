"""Log lines: one JSON object per line, or a readable console line, with the record's fields."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import ConsoleFormatter, JsonFormatter

pytestmark = pytest.mark.unit


def test_json_formatter_writes_one_object_with_fields() -> None:
    record = logging.LogRecord("deltagate.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"request_id": "abc", "latency_ms": 1.5, "is_ood": [True]}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "request" and entry["level"] == "info" and entry["request_id"] == "abc"
    assert entry["is_ood"] == [True]


def test_console_formatter_writes_a_readable_line_with_fields() -> None:
    record = logging.LogRecord("deltagate.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"status": 200, "route": "/classify", "labels": ["star"]}
    line = ConsoleFormatter().format(record)
    assert "INFO" in line and "deltagate.access: request" in line
    assert line.endswith('status=200 route=/classify labels=["star"]') and "\n" not in line
