"""Evaluation outputs a person reads: JSON (complete) and Markdown tables (the headline numbers)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.markdown import markdown_table
from models.train.evaluate import MethodEval

__all__ = ["score_label", "evaluation_json", "evaluation_markdown", "write_evaluation"]


def score_label(key: str, summary: Mapping[str, Any]) -> str:
    """Table label of a score with its parameters (reference rows: METHOD.md defaults)."""
    p = summary["score_params"]
    if key == "delta_energy":
        reset = p["delta_energy_reset"]
        r = f"r={p['delta_energy_reset_logit']:.3g}" if reset == "value" else f"r={reset}"
        return f"delta_energy (c={p['delta_energy_top_c']}, T={p['delta_energy_temperature']:.3g}, {r})"
    if key == "energy":
        return f"energy (T={p['energy_temperature']:.3g})"
    if key == "mcm":
        return f"mcm (tau={p['mcm_tau']:.3g})"
    if "@" in key:
        name, params = key.split("@", 1)
        return f"{name} ({params.replace(',', ', ')}) [METHOD.md default]"
    return key


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def evaluation_json(evals: Mapping[str, MethodEval], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The complete evaluation document: one summary per method, plus anything in ``extra``."""
    return {**(extra or {}), "methods": {k: v.summary for k, v in evals.items()}}


def _headline(evals: Mapping[str, MethodEval]) -> str:
    first = next(iter(evals.values())).summary
    sets = list(first["scores"]["msp"]["ood"])
    head = ["method", "score", "ID acc", "cov. acc"] + [f"AUROC {s}" for s in sets] + [f"FPR95 {s}" for s in sets]
    rows = []
    for method, ev in evals.items():
        s = ev.summary
        cov = s["covariate_accuracy"].get("mean")
        for name, res in s["scores"].items():
            row = [method, score_label(name, s), _pct(s["id_accuracy"]), _pct(cov) if cov is not None else "-"]
            row += [_pct(res["ood"][k]["auroc"]) for k in sets] + [_pct(res["ood"][k]["fpr95"]) for k in sets]
            rows.append(row)
    return markdown_table(head, rows)


def _by_group(evals: Mapping[str, MethodEval]) -> str:
    """AUROC per near-OOD category (sub-folder), every method and score."""
    first = next(iter(evals.values())).summary["scores"]["msp"].get("ood_by_group", {})
    cols = [(k, g) for k, groups in first.items() for g in groups]
    if not cols:
        return ""
    head = ["method", "score"] + [f"{k}/{g}" for k, g in cols]
    rows = [[m, score_label(n, ev.summary)] + [_pct(r["ood_by_group"][k][g]["auroc"]) for k, g in cols]
            for m, ev in evals.items() for n, r in ev.summary["scores"].items()]
    return markdown_table(head, rows)


def _covariate(evals: Mapping[str, MethodEval]) -> str:
    styles = [k for k in next(iter(evals.values())).summary["covariate_accuracy"] if k != "mean"]
    if not styles:
        return ""
    rows = []
    for method, ev in evals.items():
        cov = ev.summary["covariate_accuracy"]
        rows.append([method, _pct(ev.summary["id_accuracy"])] + [_pct(cov[s]) for s in styles] + [_pct(cov["mean"])])
    return markdown_table(["method", "ID acc", *styles, "mean"], rows)


def _threshold(evals: Mapping[str, MethodEval]) -> str:
    rows = [(m, ev.summary["at_threshold"]) for m, ev in evals.items() if "at_threshold" in ev.summary]
    if not rows:
        return ""
    sets = list(rows[0][1]["ood_reject_rate"])
    out = [[m, t["score"], f"{t['threshold']:.4g}", _pct(t["id_pass_rate"])] + [_pct(t["ood_reject_rate"][s])
           for s in sets] for m, t in rows]
    return markdown_table(["method", "gate", "threshold", "ID pass rate", *[f"rejected {s}" for s in sets]], out)


def _own_thresholds(evals: Mapping[str, MethodEval]) -> str:
    """Every score at its own threshold (95% of ID val passes), on ID test and each OOD set."""
    rows, sets = [], None
    for method, ev in evals.items():
        for name, res in ev.summary["scores"].items():
            t = res.get("at_own_threshold")
            if t is None:
                continue
            sets = sets or list(t["ood_reject_rate"])
            rows.append([method, score_label(name, ev.summary), f"{t['threshold']:.4g}", _pct(t["id_pass_rate"])]
                        + [_pct(t["ood_reject_rate"][s]) for s in sets])
    if not rows or sets is None:
        return ""
    return markdown_table(["method", "score", "threshold", "ID test pass rate", *[f"rejected {s}" for s in sets]],
                          rows)


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
    sections = [  # (title, table); a table with no rows ("") is left out
        ("## OOD detection (ID test = positive class; percentages)", _headline),
        ("## AUROC per OOD category (%)", _by_group),
        ("## Accuracy under covariate shift (%)", _covariate),
        ("## At each bundle's calibrated gate (%)", _threshold),
        ("## Every score at its own threshold (95% of ID val pass; %)", _own_thresholds),
    ]
    for title, make_table in sections:
        if table := make_table(evals):
            out += [title, "", table, ""]
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
