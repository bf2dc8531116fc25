"""A command whose optional part is not installed stops with one line naming what installs it.

The service images carry the service and the ``deltagate`` CLI but not the research package
``proxy/`` (docker/Dockerfile.*), so there a research command (``data synth``, ``pretrain-tiny``,
``demo ...``, ``ablate``, ``bench decode``) meets ``import proxy`` failing. Simulated here the way
tests/e2e/service/test_slim_install.py simulates a core install: ``sys.modules[name] = None`` makes
every later ``import name`` raise ModuleNotFoundError.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from models.errors import OPTIONAL_MODULES, RESEARCH, missing_module_message
from tests.unit.test_packaging import names

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
WITHOUT_PROXY = "import sys\nsys.modules['proxy'] = None\nfrom deltagate.cli import cli_main\ncli_main()\n"


@pytest.mark.parametrize("argv", [
    ["data", "synth", "--out", "{tmp}/world"],
    ["pretrain-tiny", "--world", "{tmp}/world", "--out", "{tmp}/tiny.safetensors"],
    ["demo", "build", "--preset", "fast", "--work", "{tmp}/demo"],
])
def test_a_research_command_without_proxy_is_one_line_and_a_failing_status(tmp_path: Path, argv: list[str]) -> None:
    args = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PROXY, *args], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: this command needs the research package 'proxy'"), lines
    assert "pip install -e '.[train]'" in lines[0]


def test_a_module_that_is_no_optional_part_is_left_to_its_traceback() -> None:
    assert missing_module_message("numpy", "this command") is None
    assert missing_module_message(None, "this command") is None
    assert "pip install 'deltagate[torch]'" in str(missing_module_message("open_clip.factory", "engine 'torch'"))


def _extras() -> dict[str, set[str]]:
    """Each extra's distributions, self-references (``deltagate[torch]``) expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    raw = project["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        out = set()
        for req in raw[extra]:
            if req.startswith("deltagate["):
                out |= {d for e in req[len("deltagate["):-1].split(",") for d in expand(e.strip())}
            else:
                out |= names([req])
        return out

    return {extra: expand(extra) for extra in raw}


def test_each_optional_module_is_installed_by_the_extra_the_message_names() -> None:
    extras, providers = _extras(), packages_distributions()  # the dev install has every extra named here
    for module, part in OPTIONAL_MODULES.items():
        if part == RESEARCH:
            assert (REPO / module / "__init__.py").is_file()
            for dockerfile in REPO.glob("docker/Dockerfile.*"):  # what the message says of the images
                assert f"COPY {module} " not in dockerfile.read_text(encoding="utf-8"), dockerfile
            continue
        dists = names(providers.get(module, []))
        assert dists & extras[part], f"{module} ({dists}) is not in the '{part}' extra: {sorted(extras[part])}"
