"""`deltagate classify`: local files through the service's own pipeline, with the answers of POST /classify."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deltagate.cli import app
from tests.service_support import dummy_settings, serve

pytestmark = pytest.mark.integration


def _folder(root: Path) -> list[Path]:
    """A folder of the parity images (PNG, JPEG, RGBA, grey, WebP), one in a sub-folder, one unreadable file,
    and a file that is not an image by its name; returns the image files in the order the CLI takes them."""
    from tests.integration.service.test_real_bundle import test_images

    exts = ["png", "png", "jpg", "png", "png", "webp"]
    paths = [root / ("sub" if i == 1 else "") / f"img{i}.{ext}" for i, ext in enumerate(exts)]
    for path, data in zip(paths, test_images(), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("skipped: not an image name")
    return sorted([*paths, root / "broken.png"])


def test_the_cli_gives_the_answers_of_the_service(tiny_bundle: Path, tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "images"), "--bundle", str(tiny_bundle),
                                      "--engine", "onnx", "--top-k", "3", "--batch-size", "4"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["filename"] for line in lines] == [str(f) for f in files]
    assert [line["index"] for line in lines] == list(range(len(files)))  # over the whole run, across batches
    (broken,) = [line for line in lines if "error" in line]
    assert broken["error"]["code"] == "invalid_image" and str(files[0]) in broken["error"]["message"]

    upload = [("file", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    settings = dummy_settings(engine="onnx", bundle_path=tiny_bundle, device="cpu", max_batch_size=4)

    async def post() -> dict[str, Any]:
        async with serve(settings) as (client, _):
            return (await client.post("/classify?top_k=3&on_error=skip", files=upload)).json()  # type: ignore[no-any-return]

    served = asyncio.run(post())  # the CLI runs its own event loop, so this test has none of its own
    assert [e["index"] for e in served["errors"]] == [broken["index"]]
    cli = [line for line in lines if "error" not in line]
    assert len(cli) == len(served["results"]) == len(files) - 1
    for mine, theirs in zip(cli, served["results"], strict=True):
        assert Path(mine.pop("filename")).name == theirs.pop("filename")
        assert _same(mine, theirs)


def _same(a: object, b: object) -> bool:
    """Equal JSON, floats within 1e-6 (the same engine on batches that may be composed differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (a.keys(), b.keys())
        return all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), (a, b)
        return True
    assert a == b, (a, b)
    return True


def test_a_table_and_one_line_mistakes(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    files = _folder(tmp_path / "images")
    good = [str(f) for f in files if f.name != "broken.png"][:2]
    result = CliRunner().invoke(app, ["classify", *good, "--bundle", str(tiny_bundle), "--format", "table"])
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["file", "decision", "label"] and len(rows) == 2 and rows[0].startswith(good[0])

    from deltagate.cli import cli_main

    for args, needle in [([str(tmp_path / "nope")], "no such file or folder"),
                         ([str(tmp_path / "images" / "notes.txt"), "--bundle", str(tmp_path)], "manifest"),
                         ([str(tmp_path / "empty")], "no images in")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        monkeypatch.setattr(sys, "argv", ["deltagate", "classify", *args])
        with pytest.raises(SystemExit) as info:
            cli_main()
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
