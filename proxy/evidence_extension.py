"""The pre-registered extension of the evidence (``docs/evidence/protocol-extension.md``).

The original experiment (:mod:`proxy.evidence`, 5 ID splits) left every claim inconclusive: with
5 splits the t-interval over split means (df = 4) dominates every CI. The extension runs the same
pipeline, unchanged, on new random ID splits drawn from a new seed (disjoint from the original 5) and
on two pretraining seeds of the proxy:

- group ``zero-shot``: C1 on ``n_zero_shot_splits`` splits (no training: the arm list is zero-shot only);
- group ``full``: every arm (selection on ID val, prompt-tuning seeds) on the first ``n_full_splits``.

Each group is an ordinary :func:`proxy.evidence.run_evidence` run (its own ``endpoints.json`` and
``evidence.md``, checkpointed per split, so an interrupted run continues). On top of the original verdict
rule (§8 of the original protocol) this module applies the extension's margins, fixed before the run:
an equivalence statement for ΔEnergy vs energy (C1, C2: is the 95% CI within ±``equivalence_margin``?)
and a size statement for C3 and C5 (does the CI exclude the paper's +``size_margin``?). The verdict words
are :data:`EQUIVALENCE_WORDS`, :data:`SIZE_WORDS` and :func:`claim_verdicts`. :func:`combine` puts the
backbones beside the original run (``results/evidence-extension/``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from models.markdown import markdown_table
from proxy.demo import DemoConfig, backbone_seed, evidence_splits
from proxy.evidence import ARMS, EvidenceConfig, run_evidence
from proxy.stats import t_interval
from proxy.world.splits import random_id_splits, world_split
from proxy.world.synth import WORLD_FILE, load_world

__all__ = [
    "ExtensionConfig",
    "GROUPS",
    "EQUIVALENCE_WORDS",
    "SIZE_WORDS",
    "extension_split_classes",
    "equivalence_verdict",
    "size_verdict",
    "claim_verdicts",
    "extension_report",
    "build_extension",
    "backbone_differences",
    "combine",
]

logger = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("zero-shot", "full")  # run order: the cheap C1 group first


@dataclass(frozen=True)
class ExtensionConfig:
    """The extension's registered design (protocol-extension.md §2–§5)."""

    split_seed: int = 20261206  # generator of the new random ID splits (the original used 20261201)
    n_zero_shot_splits: int = 40  # C1: zero-shot on ext-1 .. ext-40
    n_full_splits: int = 20  # C2–C5: every arm on ext-1 .. ext-20
    seeds: tuple[int, ...] = (1, 2, 3)  # prompt-tuning seeds per trained arm and split
    equivalence_margin: float = 0.03  # C1, C2: ΔE − energy within ±3 AUROC points = equivalent
    size_margin: float = 0.10  # C3, C5: the paper's claimed gain, +10 AUROC points

    def evidence(self, base: EvidenceConfig, group: str, pretrain_seed: int | None) -> EvidenceConfig:
        """The evidence pipeline's configuration of one group (everything else as in the original)."""
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; valid: {', '.join(GROUPS)}")
        arms = ("zero-shot",) if group == "zero-shot" else ARMS
        return replace(base, seeds=self.seeds, arms=arms, split_seed=self.split_seed, pretrain_seed=pretrain_seed)

    def n_splits(self, group: str) -> int:
        return self.n_zero_shot_splits if group == "zero-shot" else self.n_full_splits


def extension_split_classes(world: Path, n: int, seed: int, exclude: Sequence[Sequence[str]],
                            n_classes: int = 8) -> list[tuple[str, tuple[str, ...]]]:
    """``ext-1`` .. ``ext-n``: the first ``n`` random ID splits of ``seed`` that are none of ``exclude``.

    The draw is :func:`random_id_splits` (split j from ``default_rng([seed, j])``), so ext-1 .. ext-20 of
    the full group are the first 20 of the zero-shot group's 40.
    """
    cats = load_world(world).config.categories
    banned = {frozenset(e) for e in exclude}
    drawn = random_id_splits(cats, n_classes, n + len(banned), seed)
    kept = [s for s in drawn if frozenset(s) not in banned][:n]
    return [(f"ext-{j + 1}", s) for j, s in enumerate(kept)]


# ----------------------------------------------------------------------------------------- verdict words
EQUIVALENCE_WORDS: dict[str, str] = {
    "better": "ΔEnergy better: CI above 0 and reaching the margin",
    "small gain": "ΔEnergy better, by less than the margin: CI above 0 and below +margin",
    "equivalent": "no difference as large as the margin: CI within (−margin, +margin) and containing 0",
    "small loss": "ΔEnergy worse, by less than the margin: CI below 0 and above −margin",
    "worse": "ΔEnergy worse: CI below 0 and reaching −margin",
    "inconclusive": "CI contains 0 and reaches past ±margin",
}
SIZE_WORDS: dict[str, str] = {
    "size reached": "a gain of the paper's size shown: CI lower bound ≥ size",
    "size excluded": "a gain of the paper's size excluded: CI upper bound < size",
    "size not excluded": "the CI contains the paper's size",
}


def equivalence_verdict(ci95: Sequence[float], margin: float) -> str:
    """One of :data:`EQUIVALENCE_WORDS` for a difference (positive = ΔEnergy better) and its 95% CI."""
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo > 0:
        return "better" if hi >= margin else "small gain"
    if hi < 0:
        return "worse" if lo <= -margin else "small loss"
    return "equivalent" if (lo > -margin and hi < margin) else "inconclusive"


def size_verdict(ci95: Sequence[float], size: float) -> str:
    """One of :data:`SIZE_WORDS`: does the CI reach, exclude or contain a gain of ``size``?"""
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo >= size:
        return "size reached"
    if hi < size:
        return "size excluded"
    return "size not excluded"


def _find(primary: dict[str, Any], prefix: str, contains: str = "") -> dict[str, Any] | None:
    for k, v in primary.items():
        if k.startswith(prefix) and contains in k:
            return dict(v)
    return None


def _row(ep: dict[str, Any] | None) -> dict[str, Any] | None:
    if ep is None:
        return None
    o = ep["overall"]
    return {"mean": o["mean"], "ci95": o["ci95"], "n_splits": o["n_splits"], "rule_verdict": ep["verdict"]}


def claim_verdicts(zero_shot: dict[str, Any] | None, full: dict[str, Any] | None,
                   ext: ExtensionConfig) -> list[dict[str, Any]]:
    """The extension's verdict per claim (protocol-extension.md §5) from the groups' ``endpoints`` dicts.

    C1/C2: ``reproduced`` when ΔE − energy is ``better`` or ``small gain`` and ΔE − MCM's CI lies above 0;
    ``not reproduced`` when ΔE − energy is ``equivalent``, ``small loss`` or ``worse``, or ΔE − MCM is not
    reproduced under the original rule; ``inconclusive`` otherwise. C3: the original rule (direction)
    with the size statement beside it. C4: the original rule. C5: the size rule (the original C5 rule).
    """
    m, size = ext.equivalence_margin, ext.size_margin
    out: list[dict[str, Any]] = []
    for cid, ep, prefix in (("C1", zero_shot, "P1 zero-shot"), ("C2", full, "P2 ebm")):
        prim = (ep or {}).get("primary", {})
        energy = _find(prim, prefix, "ΔE − energy, near AUROC")
        mcm = _find(prim, prefix, "ΔE − mcm, near AUROC")
        if energy is None or mcm is None:
            out.append({"claim": cid, "verdict": "not run"})
            continue
        eq = equivalence_verdict(energy["overall"]["ci95"], m)
        if eq in ("better", "small gain") and mcm["overall"]["ci95"][0] > 0:
            final = "reproduced"
        elif eq in ("equivalent", "small loss", "worse") or mcm["verdict"] == "not reproduced":
            final = "not reproduced"
        else:
            final = "inconclusive"
        out.append({"claim": cid, "verdict": final, "vs_energy": {**(_row(energy) or {}), "equivalence": eq},
                    "vs_mcm": _row(mcm)})
    prim = (full or {}).get("primary", {})
    c3, c4, c5 = _find(prim, "P3:"), _find(prim, "P4:"), _find(prim, "C5:")
    if c3 is None or c4 is None or c5 is None:
        out += [{"claim": c, "verdict": "not run"} for c in ("C3", "C4", "C5")]
        return out
    out.append({"claim": "C3", "verdict": c3["verdict"],
                "difference": {**(_row(c3) or {}), "size": size_verdict(c3["overall"]["ci95"], size)}})
    out.append({"claim": "C4", "verdict": c4["verdict"], "difference": _row(c4)})
    c5_size = size_verdict(c5["overall"]["ci95"], size)
    c5_word = {"size reached": "reproduced", "size excluded": "not reproduced"}.get(c5_size, "inconclusive")
    out.append({"claim": "C5", "verdict": c5_word, "difference": {**(_row(c5) or {}), "size": c5_size}})
    return out


def _load(path: Path) -> dict[str, Any] | None:
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


CLAIM_GROUP: dict[str, str] = {"C1": "zero-shot", "C2": "full", "C3": "full", "C4": "full", "C5": "full"}
INTERIM = "interim "  # protocol-extension.md §7: every verdict word before the registered sample size is reached


def _group_progress(doc: dict[str, Any] | None, registered: int = 0) -> dict[str, Any]:
    """How far a group got: ``n`` of its ``of`` registered splits, and whether the finished ones are its prefix
    (a group with no results at all counts as 0 of ``registered``)."""
    if doc is None:
        return {"n": 0, "of": registered, "prefix": True,
                "text": f"{'interim: ' if registered else ''}0 of {registered} splits"}
    run, missing = list(doc.get("splits_run", [])), list(doc.get("not_run", []))
    order = {name: j for j, name in enumerate(sorted([*run, *missing], key=_split_number))}
    prefix = all(order[r] < order[m] for r in run for m in missing)
    return {"n": len(run), "of": len(run) + len(missing), "prefix": prefix,
            "text": f"{'interim: ' if missing else ''}{len(run)} of {len(run) + len(missing)} splits"}


def _split_number(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (0, name)


def _mark_interim(v: dict[str, Any], progress: dict[str, Any], interim: bool) -> dict[str, Any]:
    """A claim's verdict while the backbone's registered sample size is not reached (any of its groups short):
    every verdict word prefixed ``interim`` (§7), beside its own group's "n of N splits"."""
    out = {**v, "splits": progress["text"]}
    if not interim or v["verdict"] == "not run":
        return out
    out["verdict"] = INTERIM + v["verdict"]
    for part in ("vs_energy", "vs_mcm", "difference"):
        if out.get(part):
            out[part] = {k: INTERIM + w if k in ("equivalence", "rule_verdict", "size") and w else w
                         for k, w in out[part].items()}
    return out


def extension_report(results: str | Path, ext: ExtensionConfig, command: str) -> dict[str, Any]:
    """``extension.json`` and ``extension.md`` of one backbone from its groups' ``endpoints.json``.

    A group with registered splits not yet finished (``not_run``) makes its claims' verdicts interim
    (protocol-extension.md §7: "interim: n of N splits", every verdict word prefixed "interim").
    """
    out = Path(results)
    groups = {g: _load(out / g / "endpoints.json") for g in GROUPS}
    backbone = _load(out / "backbone.json")
    seeds = {d.get("pretrain_seed") for d in groups.values() if d}
    if len(seeds) > 1:
        raise ValueError(f"{out}: the groups were run on different pretraining seeds {sorted(map(str, seeds))}")
    progress = {g: _group_progress(d, ext.n_splits(g)) for g, d in groups.items()}
    interim = any(p["n"] < p["of"] for p in progress.values())
    verdicts = claim_verdicts((groups["zero-shot"] or {}).get("endpoints"), (groups["full"] or {}).get("endpoints"),
                              ext)
    doc = {
        "command": command, "pretrain_seed": next(iter(seeds)) if seeds else None, "config": asdict(ext),
        "backbone": backbone,
        "splits_run": {g: (d or {}).get("splits_run", []) for g, d in groups.items()},
        "not_run": {g: (d or {}).get("not_run", []) for g, d in groups.items()},
        "progress": progress, "interim": interim,
        "verdicts": [_mark_interim(v, progress[CLAIM_GROUP[v["claim"]]], interim) for v in verdicts],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "extension.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "extension.md").write_text(_backbone_markdown(doc), encoding="utf-8")
    return doc


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _cell(r: dict[str, Any] | None) -> str:
    return "not run" if not r else f"{_pts(r['mean'])} {_ci(r['ci95'])} (n={r['n_splits']})"


def _statement(v: dict[str, Any]) -> str:
    if "vs_energy" in v:
        return f"vs energy: {v['vs_energy']['equivalence']}; vs MCM: {v['vs_mcm']['rule_verdict']}"
    d = v.get("difference") or {}
    return ", ".join(x for x in (d.get("rule_verdict", ""), d.get("size", "")) if x)


def _backbone_markdown(doc: dict[str, Any]) -> str:
    rows = []
    for v in doc["verdicts"]:
        if v["verdict"] == "not run":
            rows.append([v["claim"], "", "not run", "", "not run"])
        elif "vs_energy" in v:
            rows.append([v["claim"], "ΔE − energy, near AUROC", _cell(v["vs_energy"]), v["vs_energy"]["equivalence"],
                         v["verdict"]])
            rows.append([v["claim"], "ΔE − MCM, near AUROC", _cell(v["vs_mcm"]), v["vs_mcm"]["rule_verdict"], ""])
        else:
            rows.append([v["claim"], _DIFF[v["claim"]], _cell(v["difference"]), _statement(v), v["verdict"]])
    b = doc.get("backbone") or {}
    zs = b.get("zero_shot_val") or {}
    about = (f"Backbone: `{b.get('checkpoint')}`, logit scale {b.get('logit_scale', float('nan')):.1f}, zero-shot ID "
             f"val accuracy {100 * zs.get('id_accuracy', float('nan')):.1f}% on the default split (its pretraining "
             "report: validation images only)." if b else "Backbone: not recorded.")
    progress = doc.get("progress") or {g: _group_progress({"splits_run": s, "not_run": doc["not_run"][g]})
                                       for g, s in doc["splits_run"].items()}
    runs = "; ".join(f"{g}: {p['text']}" + ("" if p["prefix"] else " (not the registered order's prefix)")
                     for g, p in progress.items())
    interim = ([f"**Interim report** (protocol-extension.md §7): the registered sample size is not reached ({runs}); "
                "every verdict word is prefixed \"interim\" and none is a final verdict. The run resumes with the same "
                "command without `--aggregate-only`; `--aggregate-only` re-renders this table from the finished "
                "splits.", ""] if any(p["n"] < p["of"] for p in progress.values()) else [])
    return "\n".join([
        f"# Extension of the evidence: pretraining seed {doc['pretrain_seed']}", "",
        "Protocol: [docs/evidence/protocol-extension.md](../../docs/evidence/protocol-extension.md). Produced by:", "",
        "```bash", doc["command"], "```", "", about, "", *interim,
        f"Splits run: {runs}. Full tables: `zero-shot/evidence.md` (C1) and `full/evidence.md` (C2–C5) beside "
        "this file.", "",
        "Points (AUROC / accuracy × 100); positive = the paper's direction; mean over splits of each split's mean "
        "paired difference, 95% CI the wider of the two-stage bootstrap and the t-interval over split means.", "",
        markdown_table(["claim", "difference", "mean [95% CI] (splits)", "statement", "claim verdict"], rows), ""])


_DIFF = {"C3": "EBM − CoOp, hard-near AUROC of ΔE", "C4": "EBM − CoOp, covariate accuracy",
         "C5": "EBM+ΔE − CoOp+its best score, near AUROC"}


# ----------------------------------------------------------------------------------------- running it
def build_extension(
    cfg: DemoConfig, work_dir: str | Path, results_dir: str | Path, ext: ExtensionConfig = ExtensionConfig(), *,
    command: str = "deltagate demo extension", groups: Sequence[str] = GROUPS, pretrain_seed: int | None = None,
    only: Sequence[str] | None = None, budget_s: float | None = None, progress: bool = False,
    aggregate_only: bool = False,
) -> dict[str, Any]:
    """Run the extension's groups on the world and tiny CLIP in ``work_dir``, then write its report.

    Args:
        cfg: the demo configuration (its training schedule, selection and bootstrap settings are the original's).
        work_dir: a directory with ``world/`` and ``tiny-clip.safetensors`` (and its report); per-split
            records go to ``work_dir/extension/<group>/<split>/`` and are reused when finished.
        results_dir: ``<group>/{splits,selection,endpoints}.json``, ``evidence.md`` and ``extension.{json,md}``.
        ext: the registered design.
        command: recorded beside the results.
        groups: which groups to run now (the others' finished results are still reported).
        pretrain_seed: the pretraining seed the checkpoint must have (checked against its report).
        only: run just these splits (``ext-3,ext-4``); finished ones are always reused.
        budget_s: start no new split after this many seconds (the rest are reported "not run").
        progress: progress bars.
        aggregate_only: run nothing new: tables of the finished splits, the others "not run" (an interim report
            while another process runs the groups).

    Raises:
        FileNotFoundError: no world or checkpoint in ``work_dir``.
        ValueError: an unknown group, or ``pretrain_seed`` differs from the checkpoint's.
    """
    from models.clip_loading import load_clip
    from models.train.features import FeatureCache

    work, results = Path(work_dir), Path(results_dir)
    ckpt, world = work / "tiny-clip.safetensors", work / "world"
    if not (world / WORLD_FILE).is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{work}: needs world/ and tiny-clip.safetensors")
    for g in groups:
        ext.evidence(cfg.evidence, g, None)  # validates the group names before any work
    seed = backbone_seed(ckpt, pretrain_seed)
    _write_backbone_record(results, ckpt, seed)
    original = [list(t.class_names) for _, t in evidence_splits(world, cfg.evidence)]
    clip = load_clip(cfg.pretrain.arch, str(ckpt))
    model: Any = clip.model
    cache = FeatureCache(work / "extension" / "feature-cache", model.visual, {"name": clip.name, "config": clip.config},
                         clip.preprocess)
    deadline = 0.0 if aggregate_only else (time.time() + budget_s if budget_s else None)
    for g in groups:
        names = extension_split_classes(world, ext.n_splits(g), ext.split_seed, original, cfg.evidence.split_size)
        splits = [(n, world_split(world, ids).task("test")) for n, ids in names]
        run_evidence(clip, splits, cfg.train, ext.evidence(cfg.evidence, g, seed), work / "extension" / g,
                     results / g, cache, command, progress, deadline, only)
    return extension_report(results, ext, command)


def _write_backbone_record(results: Path, ckpt: Path, seed: int | None) -> None:
    """``backbone.json``: which checkpoint, its logit scale and its pretraining report's zero-shot numbers
    (validation images only), so the results say what they were computed on."""
    from safetensors import safe_open

    report = _load(ckpt.with_suffix(".json")) or {}
    with safe_open(str(ckpt), "pt") as f:
        scale = float(f.get_tensor("logit_scale").float().exp())
    doc = {"pretrain_seed": seed, "checkpoint": str(ckpt), "logit_scale": scale,
           "zero_shot_split": report.get("zero_shot_split"), "zero_shot_val": report.get("zero_shot"),
           "pretrain_config": report.get("config"), "train_seconds": report.get("train_seconds")}
    results.mkdir(parents=True, exist_ok=True)
    (results / "backbone.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _per_split(results: Path, group: str, key: str) -> dict[str, float]:
    doc = _load(results / group / "endpoints.json") or {}
    ep = doc.get("endpoints", {}).get("primary", {}).get(key)
    return {r["split"]: float(r["mean"]) for r in ep.get("per_split", [])} if ep else {}


_BACKBONE_DIFFS = (("C1", "zero-shot", "P1 zero-shot: ΔE − energy, near AUROC"),
                   ("C2", "full", "P2 ebm: ΔE − energy, near AUROC"))


def backbone_differences(backbones: Sequence[str | Path]) -> dict[str, Any]:
    """Protocol-extension §6: per split, the second backbone's ΔE − energy minus the first's (descriptive)."""
    if len(backbones) < 2:
        return {}
    first, second = Path(backbones[0]), Path(backbones[1])
    out = {}
    for cid, group, key in _BACKBONE_DIFFS:
        a, b = _per_split(first, group, key), _per_split(second, group, key)
        common = [s for s in a if s in b]
        if len(common) >= 2:
            out[cid] = {"splits": common, **t_interval([b[s] - a[s] for s in common])}
    return out


def combine(backbones: Sequence[str | Path], original: str | Path | None, out_dir: str | Path,
            command: str) -> dict[str, Any]:
    """The extension's backbones beside the original run: ``extension.json`` and ``headline.md`` in ``out_dir``.

    A claim's combined verdict is the backbones' common verdict; where they differ it is "backbone-dependent"
    (read as inconclusive). Only backbones that ran a claim count. While a backbone is interim or has no results
    yet, every combined verdict is interim (protocol-extension.md §7).
    """
    docs = [d for d in (_load(Path(b) / "extension.json") for b in backbones) if d]
    orig = _load(Path(original) / "endpoints.json") if original else None
    missing = [str(b) for b in backbones if not (Path(b) / "extension.json").is_file()]
    incomplete = bool(missing) or any(d.get("interim") for d in docs)
    combined: list[dict[str, Any]] = []
    for cid in ("C1", "C2", "C3", "C4", "C5"):
        per = {str(d["pretrain_seed"]): next(v for v in d["verdicts"] if v["claim"] == cid) for d in docs}
        ran = {k: v["verdict"] for k, v in per.items() if v["verdict"] != "not run"}
        words = {w.removeprefix(INTERIM) for w in ran.values()}
        final: str = "not run" if not words else (words.pop() if len(words) == 1 else "backbone-dependent")
        if final != "not run" and (incomplete or any(w.startswith(INTERIM) for w in ran.values())):
            final = INTERIM + final  # an interim or missing backbone makes every combined verdict interim (§7)
        combined.append({"claim": cid, "verdict": final, "by_pretrain_seed": ran})
    doc = {"command": command, "backbones": [str(b) for b in backbones],
           "missing": missing,
           "original": str(original) if original else None, "pretrain_seeds": [d["pretrain_seed"] for d in docs],
           "progress": {str(d["pretrain_seed"]): d.get("progress") for d in docs},
           "interim": incomplete or any(str(v["verdict"]).startswith(INTERIM) for v in combined),
           "verdicts": combined, "per_backbone": {str(d["pretrain_seed"]): d["verdicts"] for d in docs},
           "backbone_difference": backbone_differences(backbones)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extension.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "headline.md").write_text(_headline(doc, docs, orig), encoding="utf-8")
    return doc


_ORIGINAL_KEYS = {
    ("C1", "energy"): "P1 zero-shot: ΔE − energy, near AUROC", ("C1", "mcm"): "P1 zero-shot: ΔE − mcm, near AUROC",
    ("C2", "energy"): "P2 ebm: ΔE − energy, near AUROC", ("C2", "mcm"): "P2 ebm: ΔE − mcm, near AUROC",
    ("C3", ""): "P3: ebm − coop, hard-near AUROC of delta_energy", ("C4", ""): "P4: ebm − coop, covariate accuracy",
    ("C5", ""): "C5: ebm+ΔE − coop+(its HOCV-best baseline score), near AUROC",
}


def _headline(doc: dict[str, Any], docs: Sequence[dict[str, Any]], orig: dict[str, Any] | None) -> str:
    seeds = [str(d["pretrain_seed"]) for d in docs]
    final = {v["claim"]: v["verdict"] for v in doc["verdicts"]}
    rows = []
    for (cid, base), okey in _ORIGINAL_KEYS.items():
        o = ((orig or {}).get("endpoints", {}).get("primary", {})).get(okey)
        cells = []
        for d in docs:
            v = next(x for x in d["verdicts"] if x["claim"] == cid)
            r = v.get(f"vs_{base}") if base else v.get("difference")
            stmt = (r or {}).get("equivalence") or (r or {}).get("size") or (r or {}).get("rule_verdict", "")
            cells.append("not run" if not r else f"{_cell(r)} {stmt}")
        label = {"energy": "ΔE − energy, near AUROC", "mcm": "ΔE − MCM, near AUROC"}.get(base) or _DIFF[cid]
        rows.append([cid, label, "–" if o is None else f"{_pts(o['overall']['mean'])} {_ci(o['overall']['ci95'])}",
                     *cells, final[cid] if base in ("", "energy") else ""])
    head = ["claim", "difference", "original run (5 splits, exploratory)",
            *[f"extension, pretraining seed {s}" for s in seeds], "extension verdict"]
    margins = docs[0]["config"] if docs else asdict(ExtensionConfig())
    note = ("Points (AUROC / accuracy × 100); positive = the paper's direction; mean [95% CI] (number of ID splits) "
            "and the pre-registered statement (docs/evidence/protocol-extension.md §5: equivalence within ±"
            f"{100 * margins['equivalence_margin']:.0f} for ΔE − energy, the size +"
            f"{100 * margins['size_margin']:.0f} for C3/C5, the original rule otherwise). "
            f"Produced by `{doc['command']}`.")
    progress = [f"pretraining seed {d['pretrain_seed']}: "
                + "; ".join(f"{g} {p['text']}" for g, p in (d.get("progress") or {}).items()) for d in docs]
    if doc.get("interim"):
        note += (" **Interim** (protocol-extension.md §7): the registered sample size is not reached ("
                 + "; ".join(progress) + "); verdict words prefixed \"interim\" are not final verdicts.")
    if doc.get("missing"):
        note += " No results yet (not in this table): " + ", ".join(f"`{m}`" for m in doc["missing"]) + "."
    diffs = doc.get("backbone_difference") or {}
    lines = [f"- {cid} (ΔE − energy, near AUROC), pretraining seed {seeds[1]} − seed {seeds[0]} per split: "
             f"{_pts(d['mean'])} {_ci(d['ci95'])}, SD {100 * d['sd']:.1f} over {d['n']} splits (descriptive)"
             for cid, d in diffs.items()]
    backbone = ("\n\nBackbone variance (protocol-extension.md §6):\n\n" + "\n".join(lines)) if lines else ""
    return note + "\n\n" + markdown_table(head, rows) + backbone + "\n"
