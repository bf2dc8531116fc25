"""``deltagate classify PATHS --bundle B``: classify local files or folders without a server.

The images go through the service's own runtime and pipeline (:func:`service.pipeline.classify_images`:
decode, preprocess, batch, forward on the same engine, gate), in process, so every answer is the one
``POST /classify`` gives for the same file. Output: one JSON object per line (a ``/classify`` result, or
an error for a file that is not a readable image), or a table. Core dependencies only (no torch for an
ONNX bundle; the progress bar is rich's, which typer brings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from service.settings import Settings, default_text

if TYPE_CHECKING:
    from service.pipeline import Classified, InputImage

__all__ = ["classify", "image_files"]

# Deadline of one batch of files (the service's request timeout is for clients on a network).
_BATCH_TIMEOUT_S = 600.0


def image_files(paths: Sequence[Path]) -> tuple[list[Path], bool]:
    """The images the paths name: files as given, folders searched recursively (sorted; hidden names and
    other extensions skipped); and whether a folder was among them.

    Raises:
        FileNotFoundError: a path does not exist.
        DataError: nothing to classify.
    """
    from models.errors import DataError
    from models.preprocess import IMAGE_EXTENSIONS

    files: list[Path] = []
    folders = False
    for path in paths:
        if path.is_dir():
            folders = True
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise DataError(f"no images in {', '.join(str(p) for p in paths)} (images end in "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files, folders


def _read_all(paths: Sequence[Path]) -> list[InputImage]:
    from service.pipeline import InputImage

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError:  # unreadable: decoding no bytes reports it as an invalid image, as the service would
            return b""

    return [InputImage(read(p), str(p)) for p in paths]


def _chunks(files: Sequence[Path], size: int) -> Iterator[tuple[int, Sequence[Path]]]:
    for start in range(0, len(files), size):
        yield start, files[start:start + size]


async def _classify_files(settings: Settings, files: Sequence[Path], top_k: int,
                          on_batch: Callable[[Classified], None]) -> None:
    from models.errors import BundleError
    from service.metrics import ServiceMetrics
    from service.pipeline import classify_images
    from service.runtime import Phase, Runtime

    runtime = Runtime(settings, ServiceMetrics(settings.max_batch_size))
    await runtime.start()
    try:
        if runtime.phase is not Phase.READY:
            raise BundleError(f"{settings.bundle_path}: {runtime.error}")
        _, batcher = runtime.require_ready()
        loop = asyncio.get_running_loop()
        for start, part in _chunks(files, settings.max_batch_size):
            images = await loop.run_in_executor(runtime.pool, _read_all, part)
            with batcher.admit(len(images)) as ticket:
                out = await classify_images(runtime, batcher, ticket, images, top_k, "skip",
                                            time.monotonic() + _BATCH_TIMEOUT_S, first_index=start)
            on_batch(out)
    finally:
        await runtime.stop()


def _objects(out: Classified) -> list[dict[str, Any]]:
    """One JSON object per file of a batch, in file order: its ``/classify`` result, or its error."""
    rows = [(r.index, r.model_dump(mode="json")) for r in out.results]
    rows += [(e.index, {"index": e.index, "filename": e.filename,
                        "error": {"status": e.status, "code": e.code, "message": e.message}}) for e in out.errors]
    return [obj for _, obj in sorted(rows, key=lambda row: row[0])]


def _table(objects: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    rows = []
    for o in objects:
        if "error" in o:
            rows.append([o["filename"], "error", "", "", "", o["error"]["message"]])
        else:
            rows.append([o["filename"], o["decision"], o["label"], f"{o['confidence']:.3f}",
                         f"{o['gate_score']:.4g} / {o['threshold']:.4g}",
                         "out of distribution: the label is for audit only" if o["is_ood"] else ""])
    return tabulate(rows, headers=["file", "decision", "label", "confidence", "gate score / threshold", "note"])


def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (folders are searched recursively).",
                                                show_default=False)],
    bundle: Annotated[Path, typer.Option(help="Bundle directory.")] = Path(default_text("bundle_path")),
    engine: Annotated[str, typer.Option(help="auto, onnx, onnx-int8, onnx-fp16 or torch (as for serve).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (as for serve).")] = "auto",
    top_k: Annotated[int, typer.Option(min=1, help="Entries in each top_k list.")] = int(default_text("default_top_k")),
    output: Annotated[Literal["jsonl", "table"], typer.Option(
        "--format", help="jsonl: one /classify result (or error) per line, as each batch finishes; table: "
                         "one row per file at the end.")] = "jsonl",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward.")] = int(default_text("max_batch_size")),
    progress: Annotated[bool | None, typer.Option(
        help="A progress bar on stderr (default: when a folder is given and stderr is a terminal).",
        show_default=False)] = None,
) -> None:
    """Classify local images with a bundle, no server: the same answers as POST /classify for the same files.

    Exit status 0 when every file was classified, 1 when some were not readable images (each is reported).
    """
    from rich.console import Console
    from rich.progress import Progress

    from service.runtime import check_bundle

    files, folders = image_files(paths)
    settings = Settings(bundle_path=bundle, engine=engine, device=device, default_top_k=top_k,  # type: ignore[arg-type]
                        max_batch_size=batch_size, max_queue_size=max(batch_size, 256),
                        max_images_per_request=batch_size, warmup=False, ui=False, exit_on_error=False)
    check_bundle(settings)  # one line for a missing, corrupt or uncalibrated bundle, before anything loads
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # the service's start/stop lines are noise here;
        logging.getLogger("service").setLevel(logging.WARNING)  # its model-check warnings stay
    shown = progress if progress is not None else folders and sys.stderr.isatty()
    collected: list[dict[str, Any]] = []
    failed = 0
    with Progress(console=Console(stderr=True), transient=True, disable=not shown) as bar:
        task = bar.add_task("classifying", total=len(files))

        def on_batch(out: Classified) -> None:
            nonlocal failed
            failed += len(out.errors)
            for obj in _objects(out):
                if output == "jsonl":
                    typer.echo(json.dumps(obj, ensure_ascii=False))
                else:
                    collected.append(obj)
            bar.advance(task, len(out.results) + len(out.errors))

        asyncio.run(_classify_files(settings, files, top_k, on_batch))
    if output == "table":
        typer.echo(_table(collected))
    if failed:
        typer.secho(f"{failed} of {len(files)} file(s) could not be classified (see their errors)", err=True,
                    fg=typer.colors.YELLOW)
        raise typer.Exit(1)
