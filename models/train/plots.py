"""Plots of an evaluation (matplotlib, Agg backend, PNG): score histograms, ROC curves, per-class rates."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from models.train.evaluate import MethodEval  # noqa: E402

__all__ = ["plot_histograms", "plot_roc", "plot_per_class", "write_plots"]

logger = logging.getLogger(__name__)

_DPI = 90  # small files; the figures are read on screen


def _grid(rows: int, cols: int, cell: tuple[float, float] = (3.6, 2.6)) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    return fig, axes


def plot_histograms(evals: Mapping[str, MethodEval], path: Path, score: str = "delta_energy") -> Path:
    """One panel per (method, OOD set): the score of ID test images against the set, with the threshold."""
    methods = list(evals)
    sets = list(next(iter(evals.values())).ood_scores[score])
    fig, axes = _grid(len(methods), len(sets))
    for i, m in enumerate(methods):
        ev = evals[m]
        for j, s in enumerate(sets):
            ax = axes[i, j]
            id_s, ood_s = ev.id_scores[score], ev.ood_scores[score][s]
            bins = np.linspace(min(id_s.min(), ood_s.min()), max(id_s.max(), ood_s.max()), 40)
            ax.hist(id_s, bins=bins, alpha=0.6, density=True, label="ID test", color="tab:blue")
            ax.hist(ood_s, bins=bins, alpha=0.6, density=True, label=s, color="tab:red")
            if ev.threshold is not None and ev.threshold_score == score:
                ax.axvline(ev.threshold, color="black", ls="--", lw=1, label="threshold")
            ax.set_title(f"{m}: ID vs {s}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel(f"{score} (higher = ID)", fontsize=8)
            if j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_roc(evals: Mapping[str, MethodEval], path: Path, scores: tuple[str, ...] = ("delta_energy", "energy", "mcm")
             ) -> Path:
    """One panel per OOD set: ROC curves (ID positive) of each method with a few scores."""
    sets = list(next(iter(evals.values())).ood_scores[scores[0]])
    fig, axes = _grid(1, len(sets), cell=(3.8, 3.6))
    styles = dict(zip(scores, ("-", "--", ":", "-."), strict=False))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, s in enumerate(sets):
        ax = axes[0, j]
        for i, (m, ev) in enumerate(evals.items()):
            for sc in scores:
                id_s, ood_s = ev.id_scores[sc], ev.ood_scores[sc][s]
                y = np.concatenate([np.ones(len(id_s)), np.zeros(len(ood_s))])
                fpr, tpr, _ = roc_curve(y, np.concatenate([id_s, ood_s]))
                auc = ev.summary["scores"][sc]["ood"][s]["auroc"]
                ax.plot(fpr, tpr, styles[sc], color=colors[i % len(colors)], lw=1.2, label=f"{m} {sc} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.axhline(0.95, color="grey", lw=0.5, ls=":")
        ax.set_title(f"ROC: ID test vs {s}", fontsize=9)
        ax.set_xlabel("false positive rate (OOD accepted)", fontsize=8)
        ax.set_ylabel("true positive rate (ID accepted)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _bars(ax: Any, evals: Mapping[str, MethodEval], key: str, title: str, sub: str | None = None) -> None:
    rows = {m: ev.summary["at_threshold"][key] for m, ev in evals.items() if "at_threshold" in ev.summary}
    if sub is not None:
        rows = {m: r.get(sub, {}) for m, r in rows.items()}
    if not rows or not any(rows.values()):
        ax.set_axis_off()
        return
    names = sorted({n for r in rows.values() for n in r})
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    for i, (m, r) in enumerate(rows.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * r.get(n, np.nan) for n in names], width, label=m)
    ax.set_xticks(x, [n or "(flat)" for n in names], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("% flagged OOD", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plot_per_class(evals: Mapping[str, MethodEval], path: Path) -> Path:
    """At each bundle's threshold: ID test images flagged OOD per class; OOD images flagged per sub-folder."""
    first = next(iter(evals.values())).summary.get("at_threshold", {})
    grouped = list(first.get("ood_reject_rate_by_group", {}))
    fig, axes = _grid(1, 1 + len(grouped), cell=(5.0, 3.4))
    _bars(axes[0, 0], evals, "id_reject_rate_by_class", "ID test flagged OOD, per class (want low)")
    for j, s in enumerate(grouped, start=1):
        _bars(axes[0, j], evals, "ood_reject_rate_by_group", f"{s} flagged OOD, per sub-folder (want high)", sub=s)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def write_plots(out_dir: str | Path, evals: Mapping[str, MethodEval], prefix: str = "") -> list[Path]:
    """Histogram, ROC and per-class figures as PNG files in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_histograms(evals, out / f"{prefix}hist_delta_energy.png"),
        plot_roc(evals, out / f"{prefix}roc.png"),
        plot_per_class(evals, out / f"{prefix}per_class.png"),
    ]
    logger.info("wrote plots %s", [str(p) for p in paths])
    return paths
