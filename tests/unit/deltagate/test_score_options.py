"""`deltagate train` and `deltagate export` take one flag per declared score parameter, named as the manifest
names it, and refuse an invalid value in one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deltagate.cli import app
from models.scoring_spec import ScoreParams, score_param_specs

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("command", ["train", "export"])
def test_every_score_parameter_is_a_flag_with_its_declared_help(command: str) -> None:
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"}).output
    for spec in score_param_specs():
        assert f"--{spec.name.replace('_', '-')}" in out, spec.name
        assert spec.help.split(":")[0] in out
    assert "--de-top-c" not in out and "--temperature " not in out  # the old second set of names is gone


def test_the_flags_become_one_score_params(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import deltagate.commands.export as export_command

    seen: list[ScoreParams] = []

    def fake_scoring_module(loaded, names, score_params, templates):  # stops the export after the flags are read
        seen.append(score_params)
        raise SystemExit(0)

    monkeypatch.setattr("models.train.export.scoring_module_from_clip", fake_scoring_module)
    args = ["export", "--out", str(tmp_path / "b"), "--classes", "a,b", "--model", "tiny-clip", "--pretrained", "none",
            "--no-onnx",
            "--delta-energy-top-c", "2", "--delta-energy-reset", "mean", "--energy-temperature", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == [ScoreParams(delta_energy_top_c=2, delta_energy_reset="mean", energy_temperature=3.0)]
    assert export_command is not None


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--delta-energy-temperature", "0", "must be > 0"),
    ("--delta-energy-top-c", "0", "delta_energy_top_c must be >= 1"),
    ("--delta-energy-reset", "max", "'max' is not one of"),
])
def test_an_invalid_value_is_refused_before_any_work(flag: str, value: str, needle: str, tmp_path) -> None:
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "b"), "--classes", "a,b", flag, value],
                                env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "b").exists()
