"""The ``deltagate`` command line: offline pipeline, export, serving and benchmarks.

Each sub-command lives in :mod:`deltagate.commands`; heavy modules (torch, the training code,
the service) are imported inside the functions so ``deltagate --help`` stays fast.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal, NoReturn

import typer

from deltagate import __version__
from deltagate.commands.bench import bench_app
from deltagate.commands.classify import classify
from deltagate.commands.data import data_app, pretrain_tiny
from deltagate.commands.export import export, quantize
from deltagate.commands.label_set import label_set_app
from deltagate.commands.offline import ablate, calibrate, demo_app, evaluate, train
from deltagate.commands.serve import serve
from models.errors import DeltagateError, missing_module_message
from models.log_noise import quiet_third_party_logs

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
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        typer.Option(help="Logging level; third-party libraries' lines (open_clip, the ONNX exporter) show at debug."),
    ] = "info",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """deltagate: fine-tune, calibrate, export and serve CLIP classifiers with ΔEnergy OOD flags."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs(log_level)


app.command()(export)
app.command()(quantize)
app.command()(serve)
app.command()(classify)
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


def _one_line(text: str) -> str:
    """A message on one line: inner line breaks (e.g. pydantic's) become '; '."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_line(exc: typer.TyperException) -> str:
    """click's usage errors (bad option value, missing option) as one line with the command to ask for help."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{_one_line(exc.format_message())}{where}"


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {_one_line(message)}", err=True, fg=typer.colors.RED)
    raise SystemExit(code)


def cli_main() -> None:
    """Console-script entry: every user error is one line on stderr and exit status 2, never a traceback.

    User errors are click's usage errors (unknown option values, values out of range, missing
    options), the model side's :class:`DeltagateError` (bundles, data layouts, resume conflicts,
    weights that cannot be had, engines that cannot run where asked), a missing file, invalid
    settings from flags or ``DELTAGATE_*`` variables, and an optional part this install lacks (an
    extra, or the research package ``proxy`` that the service images leave out: the line says what
    installs it; :func:`models.errors.missing_module_message`). typer would print usage errors as a framed
    box after the usage text; here they get the same one-line form as the rest.
    """
    from pydantic import ValidationError

    try:
        status = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors (its vendored click's UsageError, BadParameter)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `deltagate data` alone: its help, as typer shows it
            typer.echo(exc.format_message(), err=True)
            raise SystemExit(exc.exit_code) from None
        _fail(_usage_line(exc), exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(1) from None
    except (DeltagateError, FileNotFoundError) as exc:
        _fail(str(exc))
    except ModuleNotFoundError as exc:  # an optional part this install lacks (an extra, the research package)
        message = missing_module_message(exc.name, "this command")
        if message is None:  # not an optional part: a bug, whose traceback is worth seeing
            raise
        _fail(message)
    except ValidationError as exc:
        _fail(_settings_error_line(exc))
    if isinstance(status, int) and status:  # typer.Exit(code) returns its code when not standalone
        raise SystemExit(status)
