"""`deltagate data synth / split / random-splits / faithfulness` on a small world, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from deltagate.cli import app
from models.clip_loading import load_clip
from proxy.pretrain_tiny import save_checkpoint

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "world"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "small", "--seed", "5",
                              "--id-classes", "circle,square,star", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_synth_records_seed_and_split(world):
    doc = json.loads((world / "world.json").read_text())
    assert doc["config"]["seed"] == 5 and doc["config"]["id_classes"] == ["circle", "square", "star"]


def test_split_prints_every_index_of_another_split(world):
    res = runner.invoke(app, ["data", "split", "--world", str(world), "--id-classes", "heart,ring"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["id_classes"] == ["heart", "ring"] and "circle" in doc["hard_near"]  # ring's look-alike
    assert doc["counts"]["test"] == 2 * 6 and doc["counts"]["near_val/circle"] == 4  # the small preset's counts
    bad = runner.invoke(app, ["data", "split", "--world", str(world), "--id-classes", "heart,unicorn"])
    assert bad.exit_code != 0 and "unknown ID classes" in str(bad.exception)


def test_random_splits_are_printed_reproducibly(world):
    args = ["data", "random-splits", "--world", str(world), "--n-classes", "4", "--n-splits", "3", "--seed", "2"]
    first, again = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 and first.output == again.output
    lines = first.output.strip().splitlines()
    assert len(lines) == 3 and all(len(x.split(",")) == 4 for x in lines)


def test_faithfulness_writes_json_and_markdown(world, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "random.safetensors"
    save_checkpoint(load_clip("tiny-clip").model, ckpt)
    res = runner.invoke(app, ["data", "faithfulness", "--world", str(world), "--model", f"rand={ckpt}",
                              "--n-splits", "2", "--split", "mine=heart,ring",
                              "--json-out", str(tmp_path / "f.json"), "--md-out", str(tmp_path / "f.md")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["models"][0]["model"] == "rand" and "mine" in doc["models"][0]["named_splits"]
    assert "Split `mine`" in (tmp_path / "f.md").read_text()
    bad = runner.invoke(app, ["data", "faithfulness", "--world", str(world), "--model", str(ckpt)])
    assert bad.exit_code != 0
