"""Label sets of categories the bundle never saw: the pre-registered base-to-new run (issue 17 item 5).

Protocol: docs/evidence/protocol-label-sets.md (frozen before any number existed). Everything is scored
through the bundle as shipped: ``model.onnx`` for image features (:class:`models.label_set_create.VisionFeatures`),
``text.onnx`` for label embeddings (:class:`models.text_runtime.TextEncoder`), ``scores.onnx`` and
:func:`models.scoring_spec.gate_scores` for the scores (one definition, the manifest's score parameters),
and :func:`models.label_sets.make_label_set` for the thresholds (default rule or calibrated on examples).

Run: ``python -m proxy.label_set_evidence --world runs/demo/world`` (writes
``results/evidence-label-sets/results.json`` and ``table.md``). The product never imports this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from models.bundle import Bundle, load_bundle
from models.label_set_create import VisionFeatures
from models.label_sets import make_label_set
from models.markdown import markdown_table
from models.prompts import PromptMode
from models.scoring_spec import gate_scores
from models.text_runtime import LabelScorer, TextEncoder
from proxy.stats import rank_auroc, t_interval, verdict
from proxy.world.shapes import folder_name, lookalikes_of

__all__ = ["PROTOCOL", "draw_label_sets", "pass_rate_error", "set_endpoints", "aggregate", "run", "render_table"]

# Fixed by docs/evidence/protocol-label-sets.md (§3-§5).
PROTOCOL: dict[str, Any] = {
    "n_sets": 12, "set_seed": 17, "ks": (3, 5, 8), "draws": 20, "draw_seed_base": 1000,
    "examples_per_label": (5, 10, 20, 50), "target_tpr": 0.95, "tolerance": 0.02, "margin": 0.01,
    "scores": ("delta_energy", "energy", "mcm", "max_logit"), "far_sets": ("far_noise", "far_textures"),
}
MODES: tuple[PromptMode, ...] = get_args(PromptMode)  # ("learned", "zero-shot")


def draw_label_sets(new_categories: Sequence[str], n_sets: int, ks: Sequence[int], seed: int) -> list[list[str]]:
    """Protocol §3: set i has K = ks[i mod len(ks)] labels drawn without replacement from the sorted categories."""
    rng = np.random.default_rng(seed)
    pool = sorted(new_categories)
    return [[pool[j] for j in rng.choice(len(pool), ks[i % len(ks)], replace=False)] for i in range(n_sets)]


def pass_rate_error(id_scores: np.ndarray, threshold: float, target: float) -> float:
    """Signed ID pass-rate error: share of ID scores at or above the threshold, minus the target."""
    return float((np.asarray(id_scores) >= threshold).mean() - target)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


class _Scorer:
    """One bundle's scoring of image features against a label set's embeddings (every protocol score)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.text = TextEncoder(bundle, intra_op_threads=1)
        self.scorer = LabelScorer(bundle)

    def scores(self, features: np.ndarray, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        m = self.bundle.manifest
        out = self.scorer.score(features, embeddings)
        scores = {s: gate_scores(out, s, m.logit_scale, m.scores) for s in PROTOCOL["scores"]}
        scores["pred"] = np.asarray(out["logits"]).argmax(axis=1)
        return scores


def set_endpoints(
    scorer: _Scorer, labels: Sequence[str], mode: PromptMode, test: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray], far: np.ndarray, draw_seed: int, gate: str,
) -> dict[str, Any]:
    """Protocol §4 for one label set and prompt mode: accuracy, AUROCs, pass-rate errors."""
    emb = scorer.text.embed(labels, mode)
    id_feats = np.concatenate([test[c] for c in labels])
    id_labels = np.concatenate([np.full(len(test[c]), i) for i, c in enumerate(labels)])
    others = [c for c in test if c not in labels]
    hard = [c for c in lookalikes_of(list(labels)) if c in test]
    ids = scorer.scores(id_feats, emb)
    near = scorer.scores(np.concatenate([test[c] for c in others]), emb)
    far_s = scorer.scores(far, emb)
    out: dict[str, Any] = {"id_accuracy": float((ids["pred"] == id_labels).mean()), "near_auroc": {},
                           "far_auroc": {}, "hard_near_auroc": {}, "hard_near": hard}
    hard_s = scorer.scores(np.concatenate([test[c] for c in hard]), emb) if hard else None
    for s in PROTOCOL["scores"]:
        out["near_auroc"][s] = rank_auroc(ids[s], near[s])
        out["far_auroc"][s] = rank_auroc(ids[s], far_s[s])
        if hard_s is not None:
            out["hard_near_auroc"][s] = rank_auroc(ids[s], hard_s[s])
    target = PROTOCOL["target_tpr"]
    rule = make_label_set(scorer.bundle, "evidence", labels, mode, emb, source="cli", target_tpr=target)
    out["pass_error"] = {"rule": pass_rate_error(ids[gate], rule.calibration.threshold, target)}
    rng = np.random.default_rng(draw_seed)
    for n in PROTOCOL["examples_per_label"]:
        errs = []
        for _ in range(PROTOCOL["draws"]):
            ex = {c: val[c][rng.choice(len(val[c]), n, replace=False)] for c in labels}
            ex_scores = {c: scorer.scores(f, emb)[gate] for c, f in ex.items()}
            cal = make_label_set(scorer.bundle, "evidence", labels, mode, emb, source="cli",
                                 example_scores=ex_scores, target_tpr=target, min_examples_per_label=1)
            errs.append(pass_rate_error(ids[gate], cal.calibration.threshold, target))
        e = np.asarray(errs)
        out["pass_error"][str(n)] = float(e.mean())  # signed mean over draws
        out.setdefault("pass_abs_error", {})[str(n)] = float(np.abs(e).mean())
        out.setdefault("draws_within", {})[str(n)] = float((np.abs(e) <= PROTOCOL["tolerance"]).mean())
    out.setdefault("pass_abs_error", {})["rule"] = abs(out["pass_error"]["rule"])
    return out


def _diff_verdict(ci: Sequence[float], margin: float, words: tuple[str, str, str, str]) -> str:
    """Protocol §5 words for a difference: (positive, negative-or-not-better, equivalent, inconclusive)."""
    lo, hi = float(ci[0]), float(ci[1])
    if lo > 0:
        return words[0]
    if hi < 0 and words[1] != words[2]:
        return words[1]
    if -margin < lo and hi < margin:
        return words[2]
    return words[3]


def aggregate(per_set: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Protocol §5 over label sets. ``per_set``: one dict per set with ``modes`` -> mode -> :func:`set_endpoints`."""
    margin, tol = PROTOCOL["margin"], PROTOCOL["tolerance"]
    primary = "learned"
    q1 = []
    for ood in ("near", "far"):
        for b in PROTOCOL["scores"][1:]:
            d = [s["modes"][primary][f"{ood}_auroc"]["delta_energy"] - s["modes"][primary][f"{ood}_auroc"][b]
                 for s in per_set]
            ci = t_interval(d)
            word = {"reproduced": "better", "not reproduced": "not better"}.get(
                verdict(ci["ci95"], margin), "inconclusive")
            q1.append({"ood": ood, "baseline": b, **ci, "verdict": word})
    q2 = []
    for name, get in (("id_accuracy", lambda m: m["id_accuracy"]),
                      ("near_auroc", lambda m: m["near_auroc"]["delta_energy"]),
                      ("far_auroc", lambda m: m["far_auroc"]["delta_energy"])):
        d = [get(s["modes"]["learned"]) - get(s["modes"]["zero-shot"]) for s in per_set]
        ci = t_interval(d)
        q2.append({"endpoint": name, **ci, "verdict": _diff_verdict(
            ci["ci95"], margin, ("learned helps", "learned hurts", "no difference", "inconclusive"))})
    q3 = []
    for mode in MODES:
        for src in ["rule", *map(str, PROTOCOL["examples_per_label"])]:
            abs_err = [s["modes"][mode]["pass_abs_error"][src] for s in per_set]
            signed = [s["modes"][mode]["pass_error"][src] for s in per_set]
            ci = t_interval(abs_err)
            lo, hi = ci["ci95"]
            word = "within ±2 points" if hi < tol else "outside ±2 points" if lo > tol else "inconclusive"
            q3.append({"mode": mode, "threshold": src, **ci, "signed": t_interval(signed),
                       "sets_within": float(np.mean(np.asarray(abs_err) <= tol)),
                       "draws_within": None if src == "rule" else float(np.mean(
                           [s["modes"][mode]["draws_within"][src] for s in per_set])), "verdict": word})
    levels = {mode: {"id_accuracy": t_interval([s["modes"][mode]["id_accuracy"] for s in per_set]),
                     **{f"{k}_auroc_{sc}": t_interval([s["modes"][mode][f"{k}_auroc"][sc] for s in per_set])
                        for k in ("near", "far") for sc in PROTOCOL["scores"]},
                     **{f"hard_near_auroc_{sc}": t_interval([s["modes"][mode]["hard_near_auroc"][sc] for s in per_set
                                                             if s["modes"][mode].get("hard_near_auroc")])
                        for sc in PROTOCOL["scores"]
                        if any(s["modes"][mode].get("hard_near_auroc") for s in per_set)}} for mode in MODES}
    return {"q1_delta_energy_vs_baselines": q1, "q2_learned_vs_zero_shot": q2, "q3_pass_rate_error": q3,
            "levels": levels, "n_sets": len(per_set)}


def _fmt_ci(r: Mapping[str, Any], pct: bool = False) -> str:
    f = 100.0 if pct else 1.0
    return f"{r['mean'] * f:+.3f} [{r['ci95'][0] * f:+.3f}, {r['ci95'][1] * f:+.3f}]"


def render_table(doc: Mapping[str, Any]) -> str:
    """The Markdown tables of a results document."""
    agg = doc["aggregate"]
    lv = agg["levels"]
    lines = [f"Command: `{doc['command']}`", "", f"{agg['n_sets']} label sets of new categories; mean [95 % t-CI] "
             "over sets.", "", "**Levels** (AUROC, accuracy)", ""]
    rows = [[m, _fmt_ci(lv[m]["id_accuracy"]), *[_fmt_ci(lv[m][f"{k}_auroc_{s}"]) for k in ("near", "far")
                                                 for s in PROTOCOL["scores"]]] for m in MODES]
    lines += [markdown_table(["prompts", "ID acc", *[f"{k} {s}" for k in ("near", "far") for s in PROTOCOL["scores"]]],
                             rows), "", "Hard near (look-alikes of a label; sets that have any): " + "; ".join(
        f"{m} " + ", ".join(f"{sc} {_fmt_ci(lv[m][f'hard_near_auroc_{sc}'])}" for sc in PROTOCOL["scores"]
                            if f"hard_near_auroc_{sc}" in lv[m]) for m in MODES),
              "", "**Q1** ΔEnergy − baseline AUROC (learned prompts)", ""]
    lines += [markdown_table(["OOD", "baseline", "difference", "verdict"],
                             [[r["ood"], r["baseline"], _fmt_ci(r), r["verdict"]]
                              for r in agg["q1_delta_energy_vs_baselines"]]), "",
              "**Q2** learned − zero-shot", ""]
    lines += [markdown_table(["endpoint", "difference", "verdict"],
                             [[r["endpoint"], _fmt_ci(r), r["verdict"]] for r in agg["q2_learned_vs_zero_shot"]]), "",
              "**Q3** ID pass-rate error (target 0.95; points)", ""]
    lines += [markdown_table(["prompts", "threshold", "mean abs error", "mean signed error", "sets within ±2",
                              "draws within ±2", "verdict"],
                             [[r["mode"], "default rule" if r["threshold"] == "rule" else f"{r['threshold']}/label",
                               _fmt_ci(r, pct=True), _fmt_ci(r["signed"], pct=True), f"{r['sets_within']:.2f}",
                               "-" if r["draws_within"] is None else f"{r['draws_within']:.2f}", r["verdict"]]
                              for r in agg["q3_pass_rate_error"]])]
    return "\n".join(lines) + "\n"


def run(bundle_path: Path, world: Path, out: Path, command: str) -> dict[str, Any]:
    """The whole protocol: features, per-set endpoints, aggregate; writes results.json and table.md."""
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path)
    gate = bundle.manifest.calibration.score if bundle.manifest.calibration is not None else "delta_energy"
    world_cfg = json.loads((world / "world.json").read_text(encoding="utf-8"))["config"]
    categories = list(world_cfg["categories"])
    new = [c for c in categories if c not in bundle.manifest.classes]
    vision = VisionFeatures(bundle, intra_op_threads=2)
    test = {c: vision.of_files(_images(world / "objects" / "test" / folder_name(c))) for c in categories}
    val = {c: vision.of_files(_images(world / "objects" / "val" / folder_name(c))) for c in new}
    far = np.concatenate([vision.of_files(_images(world / "far" / f / "test")) for f in PROTOCOL["far_sets"]])
    t_features = time.perf_counter() - t0
    scorer = _Scorer(bundle)
    sets = draw_label_sets(new, PROTOCOL["n_sets"], PROTOCOL["ks"], PROTOCOL["set_seed"])
    per_set = [{"labels": labels, "k": len(labels), "modes": {
        mode: set_endpoints(scorer, labels, mode, test, val, far, PROTOCOL["draw_seed_base"] + i, gate)
        for mode in MODES}} for i, labels in enumerate(sets)]
    doc = {"command": command, "protocol": "docs/evidence/protocol-label-sets.md",
           "bundle": {"path": str(bundle_path), "fingerprint": bundle.fingerprint()}, "world": str(world),
           "world_json_sha256": hashlib.sha256((world / "world.json").read_bytes()).hexdigest(),
           "gate": gate, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in PROTOCOL.items()},
           "new_categories": new, "images": {"test_per_category": {c: len(v) for c, v in test.items()},
                                             "val_per_category": {c: len(v) for c, v in val.items()},
                                             "far": len(far)},
           "per_set": per_set, "aggregate": aggregate(per_set),
           "seconds": {"features": round(t_features, 1), "total": round(time.perf_counter() - t0, 1)}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(render_table(doc), encoding="utf-8")
    return doc


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    p.add_argument("--out", type=Path, default=Path("results/evidence-label-sets"))
    args = p.parse_args(argv)
    command = "python -m proxy.label_set_evidence " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    command = command.rstrip()
    doc = run(args.bundle, args.world, args.out, command)
    sys.stdout.write(render_table(doc))


if __name__ == "__main__":
    main()
