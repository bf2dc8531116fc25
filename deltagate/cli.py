"""The ``deltagate`` command line: offline pipeline, export, serving and benchmarks.

Each sub-command lives in :mod:`deltagate.commands`; heavy modules (torch, the training code,
the service) are imported inside the functions so ``deltagate --help`` stays fast.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from deltagate import __version__
from deltagate.commands.bench import bench_app
from deltagate.commands.data import data_app, pretrain_tiny
from deltagate.commands.export import export, quantize
from deltagate.commands.label_set import label_set_app
from deltagate.commands.offline import ablate, calibrate, demo_app, evaluate, train
from deltagate.commands.serve import serve
from models.errors import DeltagateError

app = typer.Typer(
    name="deltagate",
    help="CLIP classification that refuses to guess: EBM prompt tuning, ΔEnergy OOD flags, serving.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deltagate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="Logging level (debug, info, warning, error).")] = "info",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """deltagate: fine-tune, calibrate, export and serve CLIP classifiers with ΔEnergy OOD flags."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


app.command()(export)
app.command()(quantize)
app.command()(serve)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.command("pretrain-tiny")(pretrain_tiny)
app.command()(train)
app.command()(calibrate)
app.command()(evaluate)
app.command()(ablate)
app.add_typer(demo_app, name="demo")
app.add_typer(label_set_app, name="label-set")


def _settings_error_line(exc: Exception) -> str:
    """One line for a pydantic ValidationError: each bad field with its flag/env name and the reason."""
    parts = []
    for err in exc.errors():  # type: ignore[attr-defined]
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        where = f" (--{field.replace('_', '-')} / DELTAGATE_{field.upper()})" if err.get("loc") else ""
        given = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{field}{where}: {err.get('msg', 'invalid')}{given}")
    return "invalid setting: " + "; ".join(parts)


def cli_main() -> None:
    """Console-script entry: expected user errors print one clear line instead of a traceback.

    User errors are the model side's :class:`DeltagateError` (bundles, engines that cannot run
    where asked), a missing file, and invalid settings from flags or ``DELTAGATE_*`` variables.
    """
    from pydantic import ValidationError

    try:
        app()
    except (DeltagateError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except ValidationError as exc:
        typer.secho(f"error: {_settings_error_line(exc)}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
