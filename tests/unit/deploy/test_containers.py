"""deploy/containers without an engine: what decides a rebuild, where the stand-in's packages come
from, and how a missing engine is explained (tests/container runs the engine itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.containers import engine, standin
from deploy.containers.engine import build_key, context_files, dockerignore_allowlist
from deploy.containers.standin import compose_image, debian_mirror

pytestmark = pytest.mark.unit

ROOT = engine.ROOT


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small build context: an allowlist .dockerignore, allowed and excluded files."""
    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n!service/\n**/__pycache__\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "service").mkdir()
    (tmp_path / "service/app.py").write_text("print('v1')\n")
    (tmp_path / "service/__pycache__").mkdir()
    (tmp_path / "service/__pycache__/app.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "notes.md").write_text("not in the context\n")
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    return tmp_path


def test_the_build_context_is_what_dockerignore_lets_through(tree: Path) -> None:
    assert dockerignore_allowlist(tree) == ["pyproject.toml", "service"]
    assert [p.relative_to(tree).as_posix() for p in context_files(tree)] == ["pyproject.toml", "service/app.py"]


def test_build_key_changes_with_what_the_build_reads_and_only_that(tree: Path) -> None:
    dockerfile = tree / "Dockerfile"
    key = build_key(dockerfile, {"PYTHON_IMAGE": "base"}, ["base-id-1"], root=tree)
    (tree / "notes.md").write_text("edited\n")
    (tree / "service/__pycache__/app.cpython-311.pyc").write_bytes(b"\1")
    assert build_key(dockerfile, {"PYTHON_IMAGE": "base"}, ["base-id-1"], root=tree) == key  # outside the context
    changed = [
        build_key(dockerfile, {"PYTHON_IMAGE": "other"}, ["base-id-1"], root=tree),  # a build argument
        build_key(dockerfile, {"PYTHON_IMAGE": "base"}, ["base-id-2"], root=tree),  # a new base image
    ]
    (tree / "service/app.py").write_text("print('v2')\n")
    changed.append(build_key(dockerfile, {"PYTHON_IMAGE": "base"}, ["base-id-1"], root=tree))  # the code
    (tree / "service/app.py").write_text("print('v1')\n")
    dockerfile.write_text("FROM y\n")
    changed.append(build_key(dockerfile, {"PYTHON_IMAGE": "base"}, ["base-id-1"], root=tree))  # the Dockerfile
    assert key not in changed and len(set(changed)) == len(changed)


def test_the_repository_context_holds_what_the_dockerfiles_copy() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in context_files()}
    assert {"pyproject.toml", "README.md", "docker/pyproject_deps.py", "bundles/default/manifest.json"} <= names
    assert not [n for n in names if n.startswith(("tests/", ".venv/", "results/")) or "__pycache__" in n]
    # The proxy research (proxy/) stays out of every image: serving never imports it (tests/unit/test_layering.py),
    # so the images run without it (tests/container), and `pip install .` in them finds no proxy package to add.
    assert {"models/bundle.py", "service/app.py", "deltagate/cli.py"} <= names
    assert not [n for n in names if n.startswith("proxy/")]


def test_debian_mirror_is_read_from_deb822_or_one_line_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                      "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
                      "Suites: bookworm-security\nComponents: main\n")
    assert debian_mirror((deb822,)) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://old.example/debian bookworm main\n"
                        "deb [arch=amd64] http://one.example/debian bookworm main contrib\n")
    assert debian_mirror((tmp_path / "absent", one_line)) == "http://one.example/debian"
    with pytest.raises(RuntimeError, match="no apt source for Debian bookworm"):
        debian_mirror((tmp_path / "absent",))


def test_compose_images_are_named_as_a_pull_would_name_them() -> None:
    assert compose_image("prometheus") == "docker.io/prom/prometheus:v2.53.0"
    assert compose_image("grafana").startswith("docker.io/grafana/grafana:")


def test_a_missing_engine_is_explained_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    assert "run the container tests as root" in (engine.unavailable_reason() or "")
    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    assert "`make system-deps` (as root) installs it" in (engine.unavailable_reason() or "")


def test_the_stand_in_recipe_keeps_the_dockerfiles_clean() -> None:
    """The proxy's CA and pip.conf belong to the stand-in base only, never to the Dockerfiles."""
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text(encoding="utf-8")
        assert "ca-certificates.crt" not in text and "/etc/pip.conf" not in text and "standin" not in text
    assert "/etc/pip.conf" in Path(standin.__file__).read_text(encoding="utf-8")


def test_pruning_an_old_tag_also_removes_the_untagged_images_of_its_build(tmp_path: Path) -> None:
    """Each build leaves its builder stage untagged (~0.5 GB, labelled with the build key): when a
    tag is pruned, so is that; the tag kept, the newest ones and the recent ones stay."""
    import json
    import time

    now = time.time()
    old = now - engine.PRUNE_AFTER_S - 60
    images = [{"Created": int(old - i), "Names": [f"localhost/x/cpu:key{i}"]} for i in range(engine.KEEP_TAGS + 2)]
    images.append({"Created": int(now), "Names": ["localhost/x/cpu:fresh"]})
    calls = tmp_path / "calls"
    fake = tmp_path / "podman"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$*\" >> {calls}\n"
                    f"if [ \"$1\" = images ]; then cat {tmp_path / 'images.json'}; fi\n")
    fake.chmod(0o755)
    (tmp_path / "images.json").write_text(json.dumps(images))

    engine._prune_old_tags(engine.Podman(binary=str(fake)), "localhost/x/cpu", keep="localhost/x/cpu:key4")

    made = calls.read_text().splitlines()
    removed = sorted(line.split()[-1] for line in made if line.startswith("rmi "))
    pruned = sorted(line.split("=")[-1] for line in made if line.startswith("image prune"))
    # Newest KEEP_TAGS (fresh, key0, key1) stay; key4 is the one in use; key2 and key3 go, with their builds.
    assert removed == ["localhost/x/cpu:key2", "localhost/x/cpu:key3"]
    assert pruned == ["key2", "key3"]
    assert all("--force" in line for line in made if line.startswith("image prune"))
