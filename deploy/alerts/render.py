"""Render the Prometheus alert rules, their promtool tests and the Kubernetes PrometheusRule.

The drift alerts compare live gate-score histogram buckets with the bundle's calibration, and a
histogram bucket can only be selected by its ``le`` label, which is a bundle-specific number. So
the rules are rendered from templates for one bundle (the default: ``bundles/default``, the one the
images ship) into three files that must stay in sync:

- ``docker/prometheus/alerts.yml``: loaded by the compose Prometheus (``prometheus.yml``);
- ``docker/prometheus/alerts.test.yml``: ``promtool test rules`` cases for every alert;
- ``deploy/k8s/base/prometheusrule.yaml``: the same groups as a Prometheus Operator resource.

``tests/unit/deploy/test_alerts.py`` re-renders them and fails when a committed file differs (a
new default bundle means: run this script), then runs promtool on the result.

Usage::

    python -m deploy.alerts.render                      # bundles/default -> the three files
    python -m deploy.alerts.render --bundle path/to/bundle --out-dir /tmp/rules
    python -m deploy.alerts.render --engine auto --out-dir /tmp/rules   # for `deltagate serve`'s default

The numbers are those of the graph that serves: the engine the deployments run (:data:`DEPLOYED_ENGINE`)
or ``--engine``, resolved by the service's own :func:`~service.engines.choose_engine` (``auto`` serves
the int8 graph on the CPU, with its own threshold). The service's gate histogram has the bounds of every
graph's calibration (:func:`~service.metrics.gate_score_buckets`), so the rules select buckets that
exist whichever graph serves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import yaml
from prometheus_client.utils import floatToGoString

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from deploy.capacity.bench import DEFAULT_BENCH, load_bench, p99_bound_s  # noqa: E402
from models.bundle import Bundle, load_bundle  # noqa: E402
from models.calibration import CalibrationRecord  # noqa: E402
from service.engines import choose_engine, create_engine  # noqa: E402
from service.metrics import gate_score_buckets  # noqa: E402
from service.settings import DeviceName, Settings  # noqa: E402

logger = logging.getLogger("deltagate.deploy.alerts")

HERE = Path(__file__).resolve().parent
OUTPUTS = {
    "alerts": Path("docker/prometheus/alerts.yml"),
    "tests": Path("docker/prometheus/alerts.test.yml"),
    "prometheusrule": Path("deploy/k8s/base/prometheusrule.yaml"),
}

# Policy knobs (not measurements): each is the documented default of docs/alerts.md.
POLICY: dict[str, Any] = {
    "ood_multiple": 3,  # OOD share alert: this many times the calibrated 1 - target_tpr
    "min_images_10m": 100,  # ... and only with at least this many images in the 10 min window
    "drift_tolerance": 0.15,  # drift alert: absolute deviation of the median split (~3 sigma at 100 images)
    "min_accepted_30m": 200,  # ... with at least this many accepted images in the 30 min window
    "error_share": 0.01,  # 5xx (other than 503) share of /classify
    "overload_share": 0.01,  # 503 share of /classify
}


# What the shipped files are rendered for: the engine and device that docker-compose.yml, the images
# (docker/Dockerfile.*) and the Kubernetes manifests set (DELTAGATE_ENGINE=onnx: the float32 graph and its
# calibration; their GPU variants' torch engine gates with the same one). `deltagate serve` with the
# default engine=auto serves the int8 graph, whose threshold differs slightly (render with `--engine auto`
# for it). tests/unit/deploy/test_alerts.py checks that each deployment serves these numbers.
DEPLOYED_ENGINE = "onnx"
DEPLOYED_DEVICE: DeviceName = "cpu"


class _AtTemplate(Template):
    """``@{name}`` placeholders: PromQL and Go templates already use ``$`` and ``{{ }}``."""

    delimiter = "@"


def served_calibration(bundle: Bundle, engine: str, device: DeviceName) -> tuple[str, CalibrationRecord]:
    """The engine that serves ``bundle`` with these settings, and the calibration it gates with.

    The service's own definitions: :func:`service.engines.choose_engine` resolves ``auto``, and the
    engine's view of the bundle carries the threshold it serves (``onnx-int8``: the int8 graph's own).

    Raises:
        ValueError: that graph has no calibration record.
    """
    name = choose_engine(engine, bundle, device).engine
    calib = create_engine(name, bundle, device).bundle.manifest.calibration  # not loaded: no session, no weights
    if calib is None:
        raise ValueError(f"bundle {bundle.manifest.name} has no calibration record: the drift alerts need one")
    return name, calib


def bundle_values(
    bundle: Bundle, engine: str = DEPLOYED_ENGINE, device: DeviceName = DEPLOYED_DEVICE
) -> dict[str, Any]:
    """The calibration numbers the rules need, of the graph that serves with ``engine`` on ``device``,
    with ``le`` strings as prometheus-client writes them.

    Raises:
        ValueError: the bundle has no calibration, or the histogram lacks the needed buckets.
    """
    served, calib = served_calibration(bundle, engine, device)
    buckets = gate_score_buckets(bundle.stored_manifest)  # what the service's histogram exposes (bind_model)
    threshold = round(float(calib.threshold), 6)  # gate_score_buckets rounds bounds to 6 places
    median = round(float(np.interp(0.5, calib.quantile_levels, calib.quantile_values)), 6)
    for bound in (threshold, median):
        if bound not in buckets:
            raise ValueError(f"gate score histogram has no bucket at {bound}: {buckets}")
    if median <= threshold:
        raise ValueError(f"calibration median {median} <= threshold {threshold}: the median split is empty")
    expected_ood = round(1.0 - calib.target_tpr, 6)
    return {
        "bundle_name": bundle.manifest.name,
        "bundle_version": bundle.manifest.version,
        "engine": served,
        "engine_requested": engine,
        "device": device,
        "gate_score": calib.score,
        "threshold": threshold,
        "threshold_le": floatToGoString(threshold),
        "median": median,
        "median_le": floatToGoString(median),
        "expected_ood_share": expected_ood,
        "expected_ood_share_pct": f"{expected_ood * 100:g}%",
        "expected_below_median": round((0.5 - (1.0 - calib.achieved_tpr)) / calib.achieved_tpr, 6),
    }


def template_values(bundle_path: Path, policy: dict[str, Any] | None = None, engine: str = DEPLOYED_ENGINE,
                    device: DeviceName = DEPLOYED_DEVICE) -> dict[str, Any]:
    """Every ``@{...}`` value: bundle numbers (of the graph ``engine`` serves), policy knobs, settings
    defaults, the bench bound."""
    bundle = load_bundle(bundle_path, verify=False)
    values = {**bundle_values(bundle, engine, device), **POLICY, **(policy or {})}
    values["bundle_path"] = str(bundle_path.relative_to(ROOT) if bundle_path.is_relative_to(ROOT) else bundle_path)
    timeout = Settings.model_fields["request_timeout_s"].default
    values["request_timeout_s"] = f"{timeout:g}"
    values["queue_wait_bound_s"] = f"{timeout / 2:g}"  # half the deadline: time left to react
    values["p99_bound_s"] = p99_bound_s(load_bench(DEFAULT_BENCH))
    values["bench_json"] = str(DEFAULT_BENCH.relative_to(ROOT))
    # What Prometheus' humanize / humanizePercentage print for the test cases' inputs
    # (alerts.test.yml.tmpl): the drift case puts 80 of 100 images at or below the median, 5 below
    # the threshold.
    values["drift_case_value"] = f"{abs(75 / 95 - values['expected_below_median']):.3f}"
    return values


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as ``|`` blocks, as in alerts.yml."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def prometheus_rule(alerts_text: str) -> str:
    """The PrometheusRule manifest holding exactly the groups of ``alerts_text``."""
    groups = yaml.safe_load(alerts_text)["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "deltagate"},
        "spec": {"groups": groups},
    }
    header = (
        "# GENERATED by deploy/alerts/render.py: the groups of docker/prometheus/alerts.yml as a\n"
        "# Prometheus Operator resource. Do not edit; see docs/alerts.md. Your Prometheus' ruleSelector\n"
        "# may require a label here (e.g. `release: kube-prometheus-stack`): add it with a kustomize patch.\n"
    )
    return header + yaml.dump(resource, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=120)


def render(bundle_path: Path, policy: dict[str, Any] | None = None, engine: str = DEPLOYED_ENGINE,
           device: DeviceName = DEPLOYED_DEVICE) -> dict[str, str]:
    """The three files' texts, keyed like :data:`OUTPUTS`; ``policy`` overrides :data:`POLICY`;
    the numbers are those of the graph ``engine`` serves on ``device``."""
    values = template_values(bundle_path, policy, engine, device)
    alerts = _AtTemplate((HERE / "alerts.yml.tmpl").read_text(encoding="utf-8")).substitute(values)
    tests = _AtTemplate((HERE / "alerts.test.yml.tmpl").read_text(encoding="utf-8")).substitute(values)
    return {"alerts": alerts, "tests": tests, "prometheusrule": prometheus_rule(alerts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default", help="bundle directory")
    parser.add_argument("--out-dir", type=Path, default=ROOT, help="repository root to write into")
    parser.add_argument("--engine", default=DEPLOYED_ENGINE,
                        help="DELTAGATE_ENGINE of the service the rules watch: its graph's calibration gives the "
                             f"numbers (default {DEPLOYED_ENGINE}, as the images, compose and k8s run; "
                             "`deltagate serve`'s own default is auto)")
    parser.add_argument("--device", default=DEPLOYED_DEVICE, choices=["cpu", "cuda", "auto"],
                        help="DELTAGATE_DEVICE of that service (auto resolves on this machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, text in render(args.bundle.resolve(), engine=args.engine, device=args.device).items():
        target = args.out_dir / OUTPUTS[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        logger.info("wrote %s", target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
