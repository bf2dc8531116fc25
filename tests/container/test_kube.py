"""The rendered CPU overlay's Deployment and Service, played by ``podman kube play``.

As far as one machine allows: podman makes one pod from the Deployment's template with its
security context, CPU and memory limits and emptyDir ``/tmp``; the test checks the pod turns
ready, runs every probe of the manifest (podman runs none of them by itself here: readiness and
startup probes it ignores, and the liveness probe it turns into a ``curl`` healthcheck that the
slim image cannot run), checks the hardening podman applied, that the thread budget follows the
CPU limit, and that the Service selects the pod and reaches it through its ``targetPort``.

Three changes to the rendered manifests, all of them what a user of podman would make: the image
is the one built from this tree (``kustomize edit set image`` does the same); the container port
gets ``hostIP: 127.0.0.1`` and a free ``hostPort`` (podman publishes every ``containerPort`` on the
host, on all interfaces, unless told otherwise); the Deployment gets a name of this run's own
(podman has no namespaces to keep two runs apart). Not exercised (no cluster): the
HorizontalPodAutoscaler, ServiceMonitor, PrometheusRule, NetworkPolicy, PodDisruptionBudget and
the rollout strategy; tests/unit/deploy/test_k8s.py keeps them under schema checks.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from deltagate.server_process import wait_ready
from deploy.containers.engine import Podman
from tests.container.conftest import unique_name
from tests.container.test_cpu_image import parity_files
from tests.server_process import free_test_port
from tests.unit.deploy.conftest import render_overlay

OVERLAY = "cpu"


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return copy.deepcopy(found)


def cpu_quantity(value: str | int) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


def test_cpu_overlay_plays_ready_with_probes_passing_and_the_service_answering(podman: Podman, cpu_image: str,
                                                                              tmp_path: Path) -> None:
    rendered = render_overlay(OVERLAY)
    deployment, service = by_kind(rendered, "Deployment"), by_kind(rendered, "Service")
    deployment["metadata"]["name"] = unique_name("kube")
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    container["image"] = cpu_image
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    host_port = free_test_port()
    (port,) = container["ports"]
    port.update(hostIP="127.0.0.1", hostPort=host_port)
    manifest = tmp_path / "play.yaml"
    manifest.write_text(yaml.safe_dump_all([deployment, service]), encoding="utf-8")

    pod = f"{deployment['metadata']['name']}-pod-0"
    name = f"{pod}-{container['name']}"
    url = f"http://127.0.0.1:{host_port}"
    podman("kube", "play", str(manifest), timeout=300)
    try:
        wait_ready(url, timeout_s=180.0, name=name, log_tail=lambda: podman.logs(name)[-3000:],
                   exited=lambda: None if podman.state(name)["Running"] else podman.state(name)["ExitCode"])

        # every probe of the manifest, as the kubelet would send it
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]["httpGet"]
            assert named_ports.get(probe["port"], probe["port"]) == port["containerPort"], (kind, probe)
            r = httpx.get(url + probe["path"], timeout=container[kind].get("timeoutSeconds", 1))
            assert r.status_code == 200, (kind, r.status_code, r.text)

        # the hardening and limits, as podman applied them from the manifest
        (info,) = podman.inspect(name)
        host, security = info["HostConfig"], container["securityContext"]
        assert host["ReadonlyRootfs"] is security["readOnlyRootFilesystem"] is True
        assert info["EffectiveCaps"] in (None, []) and security["capabilities"]["drop"] == ["ALL"]
        assert info["Config"]["User"].split(":")[0] == str(pod_spec["securityContext"]["runAsUser"])
        limits = container["resources"]["limits"]
        assert host["NanoCpus"] == int(cpu_quantity(limits["cpu"]) * 1e9)
        assert host["Memory"] == memory_bytes(limits["memory"])
        assert any(m["Destination"] == "/tmp" for m in info["Mounts"])  # the emptyDir volume
        budget = min(int(cpu_quantity(limits["cpu"])), len(os.sched_getaffinity(0)))
        assert httpx.get(url + "/model", timeout=10.0).json()["batching"]["cpu_budget"] == budget

        # the Service: its selector selects the pod, its targetPort is the port that answers
        (pod_info,) = podman.inspect(pod, kind="pod")
        selector = service["spec"]["selector"]
        assert selector.items() <= (pod_info.get("Labels") or {}).items(), (selector, pod_info.get("Labels"))
        (service_port,) = service["spec"]["ports"]
        target = service_port["targetPort"]
        assert named_ports.get(target, target) == port["containerPort"]
        r = httpx.post(url + "/classify", files=parity_files(), timeout=60.0)
        assert r.status_code == 200 and r.json()["num_images"] == len(parity_files()), r.text
    finally:
        podman("kube", "down", str(manifest), check=False, timeout=120)
