"""``deltagate label-set create | list | fit-rule``: named label sets and the default rule (docs/label-sets.md).

``create`` and ``list`` run on a core install (ONNX Runtime only); ``fit-rule`` reads a data root with
the offline module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deltagate.commands.command_line import command_line

label_set_app = typer.Typer(help="Named label sets of a bundle, and its default rule for sets without examples.",
                            no_args_is_help=True)

BundleOpt = Annotated[Path, typer.Option(help="Bundle directory (with a text side).")]


@label_set_app.command("create")
def create(
    bundle: BundleOpt,
    name: Annotated[str, typer.Option(help="The set's name (letters, digits, '.', '_', '-').")],
    labels: Annotated[str, typer.Option(help="The labels, 'a,b,c' (or a file with one per line).")],
    examples: Annotated[Path | None, typer.Option(
        help="Example images: one folder per label, named as the label (an underscore reads as a space). "
             "Calibrates the threshold on them (calibrated: true); without: the default rule (calibrated: false).")
    ] = None,
    prompts: Annotated[str | None, typer.Option(help="learned or zero-shot (default: the bundle's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Label-set directory (default: BUNDLE/label-sets).")] = None,
    target_tpr: Annotated[float, typer.Option(help="Share of ID images that must pass (with examples).")] = 0.95,
) -> None:
    """Embed the labels, calibrate on the examples, write the set's file atomically."""
    from models.label_set_create import create_label_set

    path_like = Path(labels)
    names = (path_like.read_text(encoding="utf-8").splitlines() if path_like.is_file() else labels.split(","))
    names = [n.strip() for n in names if n.strip()]
    ls, path = create_label_set(bundle, name, names, prompts=prompts, examples=examples,  # type: ignore[arg-type]
                                out_dir=out, target_tpr=target_tpr)
    c = ls.calibration
    how = (f"calibrated on {sum(ls.examples.values())} examples" if ls.calibrated
           else f"default rule for K={len(ls.labels)} (calibrated: false)")
    typer.echo(f"{path}: {len(ls.labels)} labels, {ls.prompts} prompts, {c.score} threshold {c.threshold:.6g} ({how})")


@label_set_app.command("list")
def list_sets(
    bundle: BundleOpt,
    directory: Annotated[Path | None, typer.Option(help="Label-set directory (default: BUNDLE/label-sets).")] = None,
) -> None:
    """The label sets of a directory, with their gate; files that do not load say why."""
    from models.bundle import LABEL_SETS_DIR, load_bundle
    from models.label_sets import LABEL_SET_SUFFIX, read_label_set
    from models.text_runtime import LabelError

    b = load_bundle(bundle)
    d = directory or b.path / LABEL_SETS_DIR
    for path in sorted(d.glob(f"*{LABEL_SET_SUFFIX}")) if d.is_dir() else []:
        try:
            ls = read_label_set(path)
        except LabelError as exc:
            typer.echo(f"{path.name}: not loadable: {exc}")
            continue
        mine = "" if ls.bundle.fingerprint == b.fingerprint() else " (another bundle's: not served)"
        shown = ", ".join(ls.labels[:6]) + (", ..." if len(ls.labels) > 6 else "")
        typer.echo(f"{ls.name}: {len(ls.labels)} labels ({shown}), {ls.prompts}, calibrated: "
                   f"{str(ls.calibrated).lower()}, threshold {ls.calibration.threshold:.6g}{mine}")


@label_set_app.command("fit-rule")
def fit_rule(
    ctx: typer.Context,
    bundle: BundleOpt,
    data: Annotated[Path, typer.Option(help="Data root with the bundle's classes: ROOT/id/val (fit) and ROOT/id/test "
                                            "(held out), or a synthetic world.")],
    subsets: Annotated[int, typer.Option(help="Random label sets per K.")] = 200,
    draws: Annotated[int, typer.Option(help="Draws per (K, examples per label) of the examples measurement.")] = 100,
    report: Annotated[Path | None, typer.Option(help="Write the measurements as JSON here.")] = None,
) -> None:
    """Fit the default rule of each prompt mode on ID val (random subsets of the bundle's classes), measure its ID
    pass rate and calibration on n examples per label on ID test; write the rules into the manifest."""
    from deltagate.commands.offline import _task
    from models.train.label_rules import fit_and_measure

    task = _task(data, None)
    if task.val is None or task.test is None:
        raise typer.BadParameter(f"{data}: needs ID val and ID test images")
    out = fit_and_measure(bundle, task.val, task.test, subsets_per_k=subsets, draws=draws)
    for mode, r in out.items():
        rule = r["rule"]
        errs = rule["measured"]["rule_pass_rates"]["per_k"]
        worst = max(v["p90_abs_error"] for v in errs.values())
        typer.echo(f"{mode}: thresholds {dict(zip(rule['ks'], [round(t, 5) for t in rule['thresholds']], strict=True))}"
                   f"; ID pass-rate |error| P90 <= {worst:.3f} over K; examples per label needed "
                   f"{rule['measured']['examples_per_label']}")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"command": command_line(ctx), **out}, indent=2) + "\n", encoding="utf-8")
