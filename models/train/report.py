"""Evaluation outputs a person reads: JSON (complete) and Markdown tables (the headline numbers)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.train.evaluate import MethodEval

__all__ = ["score_label", "evaluation_json", "evaluation_markdown", "write_evaluation"]


def score_label(key: str, summary: Mapping[str, Any]) -> str:
    """Table label of a score: energy shows its T, ΔEnergy its c and T (reference rows: METHOD.md defaults)."""
    p = summary["score_params"]
    if key == "delta_energy":
        return f"delta_energy (c={p['top_c']}, T={p['temperature']:.3g})"
    if key == "energy":
        return f"energy (T={p['temperature']:.3g})"
    if "@" in key:
        name, params = key.split("@", 1)
        return f"{name} ({params.replace(',', ', ')})"
    return key


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def evaluation_json(evals: Mapping[str, MethodEval], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The complete evaluation document: one summary per method, plus anything in ``extra``."""
    return {**(extra or {}), "methods": {k: v.summary for k, v in evals.items()}}


def _headline(evals: Mapping[str, MethodEval]) -> list[str]:
    first = next(iter(evals.values())).summary
    sets = list(first["scores"]["msp"]["ood"])
    head = ["method", "score", "ID acc", "cov. acc"] + [f"AUROC {s}" for s in sets] + [f"FPR95 {s}" for s in sets]
    head += ["AUROC mean", "FPR95 mean", "AUPR mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, ev in evals.items():
        s = ev.summary
        cov = s["covariate_accuracy"].get("mean")
        for name, res in s["scores"].items():
            row = [method, score_label(name, s), _pct(s["id_accuracy"]), _pct(cov) if cov is not None else "-"]
            row += [_pct(res["ood"][k]["auroc"]) for k in sets] + [_pct(res["ood"][k]["fpr95"]) for k in sets]
            row += [_pct(res["mean"]["auroc"]), _pct(res["mean"]["fpr95"]), _pct(res["mean"]["aupr"])]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _covariate(evals: Mapping[str, MethodEval]) -> list[str]:
    styles = [k for k in next(iter(evals.values())).summary["covariate_accuracy"] if k != "mean"]
    if not styles:
        return []
    lines = ["| method | ID acc | " + " | ".join(styles) + " | mean |", "|" + " --- |" * (len(styles) + 3)]
    for method, ev in evals.items():
        cov = ev.summary["covariate_accuracy"]
        row = [method, _pct(ev.summary["id_accuracy"])] + [_pct(cov[s]) for s in styles] + [_pct(cov["mean"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _threshold(evals: Mapping[str, MethodEval]) -> list[str]:
    rows = [(m, ev.summary["at_threshold"]) for m, ev in evals.items() if "at_threshold" in ev.summary]
    if not rows:
        return []
    sets = list(rows[0][1]["ood_reject_rate"])
    lines = ["| method | score | threshold | ID pass rate | " + " | ".join(f"rejected {s}" for s in sets) + " |",
             "|" + " --- |" * (len(sets) + 4)]
    for method, t in rows:
        row = [method, t["score"], f"{t['threshold']:.4g}", _pct(t["id_pass_rate"])]
        row += [_pct(t["ood_reject_rate"][s]) for s in sets]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def evaluation_markdown(evals: Mapping[str, MethodEval], command: str | None = None,
                        notes: Sequence[str] = ()) -> str:
    """Markdown tables: scores per method (OOD detection), covariate shift, rates at the bundle threshold.

    Args:
        evals: method -> evaluation (table rows in this order).
        command: the command that produced the numbers (printed above the tables).
        notes: extra lines printed under the title.
    """
    out = ["# Evaluation", ""]
    if command:
        out += ["Produced by:", "", "```bash", command, "```", ""]
    out += [*notes, ""] if notes else []
    out += ["## OOD detection (ID test = positive class; percentages)", "", *_headline(evals), ""]
    cov = _covariate(evals)
    if cov:
        out += ["## Accuracy under covariate shift (%)", "", *cov, ""]
    thr = _threshold(evals)
    if thr:
        out += ["## At each bundle's calibrated threshold (%)", "", *thr, ""]
    return "\n".join(out)


def write_evaluation(
    out_dir: str | Path, evals: Mapping[str, MethodEval], *, command: str | None = None,
    extra: Mapping[str, Any] | None = None, stem: str = "evaluation",
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = evaluation_json(evals, {**({"command": command} if command else {}), **(extra or {})})
    jpath, mpath = out / f"{stem}.json", out / f"{stem}.md"
    jpath.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    mpath.write_text(evaluation_markdown(evals, command) + "\n", encoding="utf-8")
    return jpath, mpath
