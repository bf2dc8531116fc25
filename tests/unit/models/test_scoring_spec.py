"""Every score parameter is declared once (models.scoring_spec.ScoreParams); the grid, the flags, the manifest keys
and /model's keys all come from that declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models.scores import SCORE_NAMES
from models.scoring_spec import (
    LOGIT_SCALE,
    NUM_CLASSES,
    ScoreParams,
    grid_values,
    renamed_legacy_keys,
    score_param_fields,
    score_param_specs,
    score_params_table,
)

pytestmark = pytest.mark.unit


def test_every_parameter_is_named_after_its_score_and_fully_declared() -> None:
    specs = score_param_specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(ScoreParams)]
    for s in specs:
        assert s.score in SCORE_NAMES and s.name.startswith(f"{s.score}_"), s.name
        assert s.help and s.grid and s.default == getattr(ScoreParams(), s.name)
        assert s.default in grid_values(s, 100.0, 8), f"{s.name}: METHOD.md's default is not searched"
    assert {n: score_param_fields(n) for n in SCORE_NAMES} == {
        "msp": (), "max_logit": (), "energy": ("energy_temperature",), "mcm": ("mcm_tau",),
        "delta_energy": ("delta_energy_temperature", "delta_energy_top_c", "delta_energy_reset",
                         "delta_energy_reset_logit"),
    }


def test_grids_resolve_the_models_scale_and_class_count() -> None:
    t, c = (next(s for s in score_param_specs() if s.name == n) for n in ("delta_energy_temperature",
                                                                           "delta_energy_top_c"))
    assert LOGIT_SCALE in t.grid and NUM_CLASSES in c.grid
    assert grid_values(t, 27.93655, 8) == (1.0, 3.0, 10.0, 27.9366, 30.0, 100.0)  # sorted, scale to 4 digits
    assert grid_values(t, 100.0, 8) == (1.0, 3.0, 10.0, 30.0, 100.0)  # no repeat
    assert grid_values(c, 1.0, 8) == (1, 2, 4, 8) and grid_values(c, 1.0, 3) == (1, 2, 3)


def test_old_manifest_keys_are_read_and_unknown_ones_refused() -> None:
    old = {"top_c": 2, "temperature": 30.0, "reset": "min", "reset_logit": 0.0, "mcm_tau": 0.1}
    assert ScoreParams.from_dict(old) == ScoreParams(delta_energy_top_c=2, delta_energy_temperature=30.0,
                                                     delta_energy_reset="min", mcm_tau=0.1)
    assert renamed_legacy_keys({"energy_temperature": 3.0}) == {"energy_temperature": 3.0}
    with pytest.raises(ValueError, match="unknown score parameter.*valid: delta_energy_temperature"):
        ScoreParams.from_dict({"tau": 1.0})
    with pytest.raises(ValueError, match="given twice"):
        renamed_legacy_keys({"temperature": 1.0, "delta_energy_temperature": 2.0})


@pytest.mark.parametrize("bad", [{"delta_energy_temperature": 0.0}, {"energy_temperature": -1.0},
                                 {"mcm_tau": 0.0}, {"delta_energy_top_c": 0}, {"delta_energy_reset": "max"}])
def test_invalid_values_are_refused_naming_the_parameter(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ScoreParams(**bad)  # type: ignore[arg-type]


def test_docs_table_is_generated_from_the_declaration() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "bundle.md").read_text(encoding="utf-8")
    start, end = "<!-- score-params-table:start -->\n", "\n<!-- score-params-table:end -->"
    assert start in doc and end in doc
    assert doc.split(start, 1)[1].split(end, 1)[0] == score_params_table(), (
        "docs/bundle.md's score-parameter table is stale; regenerate it with "
        "python -c \"from models.scoring_spec import score_params_table; print(score_params_table())\""
    )
