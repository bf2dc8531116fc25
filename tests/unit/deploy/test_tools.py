"""The external-tool rule of the deploy tests: skip locally, fail under CI."""

from __future__ import annotations

import pytest

from tests.unit.deploy import conftest


@pytest.mark.unit
@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception), ("false", pytest.skip.Exception),
                                             ("true", pytest.fail.Exception), ("1", pytest.fail.Exception)])
def test_missing_tool_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="make system-deps"):
        conftest.require_tool("promtool")
