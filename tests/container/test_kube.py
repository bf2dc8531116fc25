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

The KServe InferenceService (deploy/k8s/kserve) is a custom resource that podman cannot play: what
runs of it is its predictor's pod, which KServe (through Knative) makes from the predictor's pod
fields. The second test plays that pod as a Pod with the same three changes, and checks what the
image must do for KServe: ready on the protocol's health routes that its probes name, hardened and
limited as the predictor says, and answering ``/v2/models/<name>/infer`` as ``/classify`` answers.
Not exercised (no cluster, no Knative): the queue-proxy, the autoscaler, revisions, the ingress.
"""

from __future__ import annotations

import base64
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
from tests.unit.deploy.conftest import ROOT, render_kustomization, render_overlay

OVERLAY = "cpu"
KSERVE_DIR = ROOT / "deploy/k8s/kserve"
MODEL = "deltagate-default"  # the default bundle's name: the model of /v2/models/{name}/...


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return copy.deepcopy(found)


def cpu_quantity(value: str | int) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


def play_here(container: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The image built from this tree, and its one port published on 127.0.0.1 only (a free port)."""
    host_port = free_test_port()
    (port,) = container["ports"]
    port.update(hostIP="127.0.0.1", hostPort=host_port)
    return f"http://127.0.0.1:{host_port}", port


def assert_hardened_and_limited(podman: Podman, name: str, container: dict[str, Any], run_as_user: int,
                                url: str) -> None:
    """The security context, limits and emptyDir ``/tmp`` of the manifest, as podman applied them."""
    (info,) = podman.inspect(name)
    host, security = info["HostConfig"], container["securityContext"]
    assert host["ReadonlyRootfs"] is security["readOnlyRootFilesystem"] is True
    assert info["EffectiveCaps"] in (None, []) and security["capabilities"]["drop"] == ["ALL"]
    assert info["Config"]["User"].split(":")[0] == str(run_as_user)
    limits = container["resources"]["limits"]
    assert host["NanoCpus"] == int(cpu_quantity(limits["cpu"]) * 1e9)
    assert host["Memory"] == memory_bytes(limits["memory"])
    assert any(m["Destination"] == "/tmp" for m in info["Mounts"])  # the emptyDir volume
    budget = min(int(cpu_quantity(limits["cpu"])), len(os.sched_getaffinity(0)))
    assert httpx.get(url + "/model", timeout=10.0).json()["batching"]["cpu_budget"] == budget


def test_cpu_overlay_plays_ready_with_probes_passing_and_the_service_answering(podman: Podman, cpu_image: str,
                                                                              tmp_path: Path) -> None:
    rendered = render_overlay(OVERLAY)
    deployment, service = by_kind(rendered, "Deployment"), by_kind(rendered, "Service")
    deployment["metadata"]["name"] = unique_name("kube")
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    container["image"] = cpu_image
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    url, port = play_here(container)
    manifest = tmp_path / "play.yaml"
    manifest.write_text(yaml.safe_dump_all([deployment, service]), encoding="utf-8")

    pod = f"{deployment['metadata']['name']}-pod-0"
    name = f"{pod}-{container['name']}"
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
        assert_hardened_and_limited(podman, name, container, pod_spec["securityContext"]["runAsUser"], url)

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


def test_kserve_predictor_pod_plays_ready_on_the_v2_probes_and_infers(podman: Podman, cpu_image: str,
                                                                     tmp_path: Path) -> None:
    from kubernetes.client import V1PodSpec

    (isvc,) = [r for r in render_kustomization(KSERVE_DIR) if r["kind"] == "InferenceService"]
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    pod_spec = copy.deepcopy({k: v for k, v in predictor.items() if k in V1PodSpec.attribute_map.values()})
    assert "minReplicas" not in pod_spec and "containers" in pod_spec  # Knative's fields stay with Knative
    (container,) = pod_spec["containers"]
    container["image"] = cpu_image
    url, port = play_here(container)
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": pod_spec,
           "metadata": {"name": unique_name("kserve"), "labels": isvc["metadata"].get("labels", {})}}
    manifest = tmp_path / "predictor.yaml"
    manifest.write_text(yaml.safe_dump(pod), encoding="utf-8")

    name = f"{pod['metadata']['name']}-{container['name']}"
    podman("kube", "play", str(manifest), timeout=300)
    try:
        wait_ready(url, timeout_s=180.0, name=name, log_tail=lambda: podman.logs(name)[-3000:],
                   exited=lambda: None if podman.state(name)["Running"] else podman.state(name)["ExitCode"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):  # as the kubelet sends them
            probe = container[kind]["httpGet"]
            assert probe["port"] == port["containerPort"] and probe["path"].startswith("/v2/health/"), (kind, probe)
            r = httpx.get(url + probe["path"], timeout=container[kind].get("timeoutSeconds", 1))
            assert r.status_code == 200, (kind, r.status_code, r.text)
        assert_hardened_and_limited(podman, name, container, container["securityContext"]["runAsUser"], url)

        assert httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=10.0).status_code == 200
        files = parity_files()
        body = {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES",
                            "data": [base64.b64encode(data).decode() for _, (_, data, _) in files]}],
                "outputs": [{"name": "label"}, {"name": "is_ood"}]}
        r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60.0)
        assert r.status_code == 200, r.text
        labels, is_ood = (out["data"] for out in r.json()["outputs"])
        results = httpx.post(url + "/classify", files=files, timeout=60.0).json()["results"]
        assert labels == [res["label"] for res in results] and is_ood == [res["is_ood"] for res in results]
        assert False in is_ood and True in is_ood  # both decisions, as in the parity images
    finally:
        podman("kube", "down", str(manifest), check=False, timeout=120)
