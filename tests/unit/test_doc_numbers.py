"""Numbers in the docs are checked against the files that hold them, so a rebuilt bundle or a rerun cannot
leave a page stale (results/ itself is written by commands and is not checked here).

- **Precise numbers** (four or more decimals) in the prose and tables of a tracked Markdown file must
  appear, at that precision, in a committed output: ``results/**``, a bundle's ``manifest.json`` or the
  rendered alert rules. A number that comes from somewhere else is listed in :data:`CHECKED_ELSEWHERE` with
  the test that checks it. Fenced code blocks are transcripts of the command written in them, and are left
  to it (the README's example response is checked below).
- **Claims**: the default bundle's threshold, calibration median and drift share in ``docs/alerts.md``,
  the example response and the shipped bundle's headline numbers in ``README.md``, and the README's
  evidence table, are recomputed from the bundle, ``results/evaluation.json`` and
  ``results/evidence/headline.md``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "bundles" / "default"
_PRECISE = re.compile(r"(?<![\w.])-?\d+\.\d{4,}(?!\d)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

# Precise numbers that no committed output holds, with where they are checked instead.
CHECKED_ELSEWHERE: dict[str, set[str]] = {
    "docs/METHOD.md": {"2510.11296"},  # the paper's arXiv identifier
    # The int8 record of a random-weight bench bundle (`deltagate bench bundle`) whose manifest was not committed:
    # UNCHECKED until that record is written under results/ (`deltagate quantize --report`).
    "docs/benchmarks.md": {"0.9322"},
}


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def _committed_numbers() -> np.ndarray:
    sources = _tracked("results/*.json", "results/*.md", "bundles/*/manifest.json", "docker/prometheus/*.yml")
    values = [float(m) for p in sources for m in _NUMBER.findall(p.read_text(encoding="utf-8", errors="ignore"))]
    return np.asarray(values, dtype=np.float64)


def _doc(rel: str) -> str:
    """A page with its whitespace collapsed (a claim may wrap across lines)."""
    return " ".join((ROOT / rel).read_text(encoding="utf-8").split())


def precise_numbers_without_source(text: str, committed: np.ndarray, allowed: set[str]) -> list[str]:
    """The precise numbers of ``text`` that no committed value rounds to (and that are not ``allowed``)."""
    out = []
    for number in _PRECISE.findall(text):
        places = len(number.split(".")[1])
        found = np.any(np.abs(np.round(committed, places) - float(number)) < 10 ** -(places + 2))
        if number not in allowed and not found:
            out.append(number)
    return out


def test_precise_numbers_in_the_docs_come_from_committed_outputs() -> None:
    committed = _committed_numbers()
    stale = []
    for md in _tracked("*.md"):
        rel = md.relative_to(ROOT).as_posix()
        if rel.startswith("results/"):
            continue
        prose = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.DOTALL)  # transcripts left out
        missing = precise_numbers_without_source(prose, committed, CHECKED_ELSEWHERE.get(rel, set()))
        stale += [f"{rel}: {n}" for n in missing]
    assert not stale, ("numbers in the docs that no committed output (results/, a bundle manifest, the rendered "
                       "alert rules) holds; quote the command's output again:\n" + "\n".join(stale))


def test_the_scan_catches_a_stale_number() -> None:
    committed = np.asarray([2.1279776096343994, 0.473251])
    text = "threshold 2.127978, median 1.287918, share 0.473251, arXiv 2510.11296"
    assert precise_numbers_without_source(text, committed, {"2510.11296"}) == ["1.287918"]


def test_alerts_page_quotes_the_default_bundles_rendered_numbers() -> None:
    from deploy.alerts.render import bundle_values
    from deploy.capacity.bench import DEFAULT_BENCH, p99_bound_s

    values = bundle_values(load_bundle(DEFAULT_BUNDLE, verify=False))
    page = _doc("docs/alerts.md")
    assert f"threshold {values['threshold']:.6f}" in page
    assert f"calibration median {values['median']:.6f}" in page
    assert page.count(f"{values['expected_below_median']:.6f}") == 2  # the summary and the drift alert
    bench = json.loads(DEFAULT_BENCH.read_text(encoding="utf-8"))
    worst = max(r["p99_ms"] for r in bench["service"] if r["concurrency"] == max(x["concurrency"]
                                                                               for x in bench["service"]))
    assert f"the p99 bound is {p99_bound_s(bench):g} s" in page and f"{worst / 1000:.2f} s" in page


def _readme_example() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)```", text, flags=re.DOTALL)
    assert block is not None, "README.md has no example response"
    return dict(json.loads(block.group(1)))


def test_readme_example_response_agrees_with_the_default_bundle() -> None:
    """The abridged /classify response in the README: the bundle's name, threshold and decisions, and each
    ΔEnergy's p-value on the bundle's calibration quantiles, as the service computes them."""
    from service.engines import choose_engine

    bundle = load_bundle(DEFAULT_BUNDLE, verify=False)
    choice = choose_engine("auto", bundle, "cpu")  # what `make serve` serves: its graph's own threshold
    manifest = (bundle.int8_variant() if choice.engine == "onnx-int8" else bundle).manifest
    calib = manifest.calibration
    assert calib is not None
    example = _readme_example()
    assert example["model"] == {"name": manifest.name, "version": manifest.version}
    for r in example["results"]:
        assert r["threshold"] == round(calib.threshold, 4)
        assert r["is_ood"] == (r["delta_energy"] < calib.threshold) == (r["decision"] == "rejected_ood")
        assert r["ood_p_value"] == round(float(calib.p_value(np.asarray([r["delta_energy"]]))[0]), 4)
        assert r["label"] in manifest.classes
    assert example["num_rejected_ood"] == sum(r["is_ood"] for r in example["results"])


def test_readme_headline_numbers_are_the_shipped_bundles_evaluation() -> None:
    ebm = json.loads((ROOT / "results" / "evaluation.json").read_text(encoding="utf-8"))["methods"]["ebm"]
    ood = ebm["scores"]["delta_energy"]["ood"]
    temperature = load_bundle(DEFAULT_BUNDLE, verify=False).manifest.scores.delta_energy_temperature
    claim = (f"ΔEnergy gate at T = {temperature:g}: ID accuracy {100 * ebm['id_accuracy']:.1f}, near-OOD AUROC "
             f"{100 * ood['near']['auroc']:.1f}, far noise {100 * ood['far_noise']['auroc']:.1f}")
    assert claim in _doc("README.md")


def test_readme_evidence_table_is_the_headline_of_the_evidence_run() -> None:
    """Each claim row of the README quotes its means and CIs from results/evidence/headline.md (with − for -)."""
    headline = (ROOT / "results" / "evidence" / "headline.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("−", "-")
    rows = [line for line in readme.splitlines() if re.match(r"\| C\d:", line)]
    assert len(rows) == 5, rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        quoted = re.findall(r"[-+]\d+\.\d \[[-+]\d+\.\d, [-+]\d+\.\d\]", cells[2])
        assert quoted, row
        for q in quoted:
            mean, ci = q.split(" ", 1)
            assert re.search(rf"\| {re.escape(mean)}\s+\| {re.escape(ci)}\s+\|", headline), f"{cells[0]}: {q}"


def test_readme_extension_table_is_the_extension_headline() -> None:
    """The README's extension rows (``| C1 | ...``) quote means, CIs, split counts and verdict words (interim
    ones included) from results/evidence-extension/headline.md, the output of ``demo extension-report``."""
    headline = (ROOT / "results" / "evidence-extension" / "headline.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("−", "-")
    rows = [line for line in readme.splitlines() if re.match(r"\| C\d \|", line)]
    assert rows, "README.md has no extension rows"
    table = [[c.strip() for c in line.strip("|").split("|")] for line in headline.splitlines()
             if re.match(r"\| C\d\s", line)]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        quoted = re.findall(r"[-+]\d+\.\d \[[-+]\d+\.\d, [-+]\d+\.\d\](?: \(n=\d+\))?(?: [a-z][a-z ]*[a-z])?",
                            " ".join(cells[2:-1]))
        assert quoted or "not run" in row, row
        same_claim = [r for r in table if r[0] == cells[0]]
        for q in quoted:
            assert any(q in c for r in same_claim for c in r), f"{cells[0]}: {q}"
        assert cells[-1] in {r[-1] for r in same_claim}, f"{cells[0]}: verdict {cells[-1]!r}"
