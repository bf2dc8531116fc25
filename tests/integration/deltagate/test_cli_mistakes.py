"""Every common mistake with the offline commands gets one line on stderr and exit status 2, never a traceback,
and before the CLIP is loaded where the check does not need it (issue 18's list)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from deltagate.cli import cli_main
from tests.conftest import ASSETS, MICRO_ARCH
from tests.offline_support import make_task_dirs
from tests.server_process import REPO

pytestmark = pytest.mark.integration

MICRO = ["--model", MICRO_ARCH, "--arch-config", str(ASSETS / f"{MICRO_ARCH}.json"), "--pretrained", "none"]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["deltagate", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    return int(exit_info.value.code or 0), capsys.readouterr().err.strip()


def _empty_class(data: Path) -> None:
    shutil.rmtree(data / "id" / "train" / "star")
    (data / "id" / "train" / "star").mkdir()
    (data / "id" / "train" / "star" / "notes.txt").write_text("not an image")


def _val_lacks_a_class(data: Path) -> None:
    shutil.rmtree(data / "id" / "val" / "star")


def _no_test_split(data: Path) -> None:
    shutil.rmtree(data / "id" / "test")


def _checkpoint_of_another_config(data: Path) -> None:
    import torch

    from models.train.trainer import TrainConfig

    run = data.parent / "run"
    run.mkdir()
    torch.save({"config": asdict(TrainConfig(epochs=5, n_ctx=4))}, run / "checkpoint.pt")
    (run / "run.json").write_text(json.dumps({"model": MICRO_ARCH, "pretrained": None}))


def _nothing(data: Path) -> None:
    pass


CASES: list[tuple[str, Callable[[Path], None], list[str], list[str]]] = [
    # (id, damage to the data, command line (DATA and RUN replaced), what the line must say)
    ("empty-class-folder", _empty_class, ["train", "--data", "DATA", "--out", "RUN", *MICRO],
     ["id/train/star has no images (1 other file(s)", "add the class's images or remove the folder"]),
    ("val-classes-differ", _val_lacks_a_class, ["train", "--data", "DATA", "--out", "RUN", *MICRO],
     ["class folders differ", "val lacks star", "need the same class folders"]),
    ("method", _nothing, ["train", "--data", "DATA", "--out", "RUN", "--method", "foo", *MICRO],
     ["--method", "'foo' is not one of 'zero-shot', 'coop', 'ebm'", "deltagate train --help"]),
    ("optimizer", _nothing, ["train", "--data", "DATA", "--out", "RUN", "--optimizer", "foo", *MICRO],
     ["--optimizer", "'sgd', 'adamw'"]),
    ("ce-on", _nothing, ["train", "--data", "DATA", "--out", "RUN", "--ce-on", "foo", *MICRO],
     ["--ce-on", "'edited', 'original'"]),
    ("epochs-0", _nothing, ["train", "--data", "DATA", "--out", "RUN", "--epochs", "0", *MICRO],
     ["--epochs", "greater than or equal to 1"]),
    ("evaluate-without-test", _no_test_split, ["evaluate", "--data", "DATA", "--bundle", "b=/nonexistent"],
     ["id/test not found", "evaluate scores ID test images"]),
    ("target-tpr", _nothing, ["calibrate", "--bundle", "/nonexistent", "--data", "DATA", "--target-tpr", "1.5"],
     ["--target-tpr", "1.5 is not a share of images", "(0, 1]"]),
    ("resume-conflict", _checkpoint_of_another_config,
     ["train", "--data", "DATA", "--out", "RUN", "--epochs", "3", "--n-ctx", "4", *MICRO],
     ["was written by another configuration (epochs 5 -> 3", "--no-resume to start over"]),
    ("weights-unavailable", _nothing, ["train", "--data", "DATA", "--out", "RUN"],
     ["ViT-B-32/openai cannot be had here", "--pretrained /path/to/open_clip_model.safetensors", "--cache-dir"]),
    ("missing-option", _nothing, ["train", "--out", "RUN"], ["Missing option '--data'"]),
]


@pytest.mark.parametrize(("damage", "args", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_exit_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None], args: list[str], needles: list[str],
) -> None:
    import deltagate.commands.offline as offline

    data = make_task_dirs(tmp_path / "data", per_class=2)
    damage(data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default weights cannot be fetched, wherever this runs
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if "--pretrained" in args or args[0] != "train":  # all but the case of the default (unavailable) weights:
        # the CLIP is never loaded for these: each is found from the arguments, the folders or a checkpoint
        monkeypatch.setattr(offline, "load_chosen_clip", lambda *a, **k: pytest.fail("the CLIP was loaded"))
    argv = [str(data) if a == "DATA" else str(tmp_path / "run") if a == "RUN" else a for a in args]
    code, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize(("args", "needle"), [
    (["train", "--data", "DATA", "--out", "RUN", "--epochs", "0"], "--epochs"),
    (["evaluate", "--data", "DATA_NO_TEST", "--bundle", "b=/nonexistent"], "id/test not found"),
])
def test_the_console_script_prints_only_that_line_and_loads_no_model(tmp_path: Path, args: list[str],
                                                                      needle: str) -> None:
    """As a user runs it: a process, its whole stderr, and whether torch was imported at all for a bad option."""
    data = make_task_dirs(tmp_path / "data", per_class=1)
    no_test = shutil.copytree(data, tmp_path / "no-test")
    shutil.rmtree(no_test / "id" / "test")
    argv = [str(data) if a == "DATA" else str(no_test) if a == "DATA_NO_TEST" else str(tmp_path / "run")
            if a == "RUN" else a for a in args]
    probe = ("import sys\nfrom deltagate.cli import cli_main\nsys.argv = ['deltagate', *sys.argv[1:]]\n"
             "try:\n    cli_main()\nfinally:\n    print('torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
    if args[0] == "train":  # an option value is checked before anything heavy is imported
        assert proc.stdout.strip() == "False"
