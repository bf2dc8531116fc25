"""The slim CPU image (docker/Dockerfile.cpu), run on podman as compose and Kubernetes run it.

Same answers as the local service on the same bundle; non-root, read-only root, no capabilities,
only /tmp writable; the Dockerfile's HEALTHCHECK turns healthy; SIGTERM under load loses no
accepted request; a missing or corrupt bundle exits non-zero; a mounted bundle is served; the
thread pools follow ``--cpus``.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy.containers.engine import Podman
from service.server import EXIT_LOAD_FAILED
from tests.container.conftest import readable_copy, run_container
from tests.server_process import DEFAULT_BUNDLE, serving
from tests.service_support import (
    DRAIN_COVERING_LOAD_S,
    assert_nothing_lost,
    classify_until_refused,
    encode,
    far_ood_texture,
    id_drawing,
    noise_image,
)

UID = 10001  # the image's user (docker/Dockerfile.cpu)
REQUEST_ID = "container-parity-0001"


def parity_files() -> list[tuple[str, tuple[str, bytes, str]]]:
    """In-distribution drawings, far-OOD textures, noise, a JPEG and an odd size: both decisions."""
    drawing = np.asarray(Image.open(io.BytesIO(id_drawing("star", 3))).convert("RGB"))
    named = [("circle.png", id_drawing("circle", 4), "image/png"),
             ("square.png", id_drawing("square", 1), "image/png"),
             ("star.jpg", encode(drawing, "JPEG"), "image/jpeg"),
             ("waves.png", far_ood_texture("waves", 0), "image/png"),
             ("noise.png", noise_image(7, (97, 61)), "image/png")]
    return [("file", item) for item in named]


def classify(url: str) -> dict[str, object]:
    r = httpx.post(f"{url}/classify", files=parity_files(), headers={"X-Request-ID": REQUEST_ID}, timeout=60.0)
    assert r.status_code == 200, r.text
    return dict(r.json())


def local_answer(tmp_path: Path, bundle: Path) -> dict[str, object]:
    """The local service's ``/classify`` on ``bundle`` with the image's engine settings."""
    env = {"DELTAGATE_BUNDLE_PATH": str(bundle), "DELTAGATE_ENGINE": "onnx", "DELTAGATE_DEVICE": "cpu"}
    with serving(tmp_path / "local.log", env) as server:
        return classify(server.url)


def test_classify_answers_as_the_local_service_on_the_default_bundle(podman: Podman, cpu_image: str,
                                                                     tmp_path: Path) -> None:
    with run_container(podman, cpu_image) as container:
        served = classify(container.url)
    expected = local_answer(tmp_path, DEFAULT_BUNDLE)
    decisions = {r["decision"] for r in expected["results"]}  # type: ignore[attr-defined]
    assert len(decisions) >= 2, decisions  # the images exercise both sides of the gate
    # The same request id is sent to both, so nothing legitimately differs: the whole JSON matches.
    assert served == expected


def test_mounted_bundle_is_served_and_answers_as_locally(podman: Podman, cpu_image: str, tiny_bundle: Path,
                                                        tmp_path: Path) -> None:
    bundle = readable_copy(tiny_bundle, tmp_path / "mounted")
    mount = f"type=bind,source={bundle},target=/bundles/micro,readonly"
    with run_container(podman, cpu_image, "--mount", mount, env={"DELTAGATE_BUNDLE_PATH": "/bundles/micro"}) as c:
        model = c.get("/model").json()
        served = classify(c.url)
    assert model["name"] == "micro-test" and model["num_classes"] == 4, model
    assert served == local_answer(tmp_path, bundle)


def test_runs_non_root_read_only_without_capabilities(podman: Podman, cpu_image: str) -> None:
    with run_container(podman, cpu_image) as container:
        assert container.exec("id", "-u").stdout.strip() == str(UID)
        status = container.exec("cat", "/proc/1/status").stdout  # the service process itself
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines() if line.startswith("Cap")}
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == 0, caps
        assert "NoNewPrivs:\t1" in status
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(UID)}, uid_line
        for path in ("/probe", "/app/probe", "/opt/venv/probe", "/var/tmp/probe", "/run/probe"):
            denied = container.exec("touch", path)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr, (path, denied.stderr)
        assert container.exec("touch", "/tmp/probe").returncode == 0  # the tmpfs: multipart spooling
        r = httpx.post(f"{container.url}/classify", files=parity_files(), timeout=60.0)
        assert r.status_code == 200, r.text  # and the service works within those limits


def test_healthcheck_of_the_image_turns_healthy(podman: Podman, cpu_image: str) -> None:
    config = podman.inspect(cpu_image, kind="image")[0]["Healthcheck"]
    assert "/readyz" in " ".join(config["Test"]), config  # kept: built with --format docker
    with run_container(podman, cpu_image) as container:
        # No systemd here to time the checks: run the image's HEALTHCHECK command as the timer would.
        check = podman("healthcheck", "run", container.name, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert container.state()["Health"]["Status"] == "healthy"


def test_sigterm_under_load_loses_no_accepted_request(podman: Podman, cpu_image: str) -> None:
    clients, stop = 6, threading.Event()
    with run_container(podman, cpu_image, env={"DELTAGATE_DRAIN_S": str(DRAIN_COVERING_LOAD_S)}) as container:
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(classify_until_refused, container.url, stop) for _ in range(clients)]
            time.sleep(3.0)
            started = time.monotonic()
            podman("stop", "--time", "40", container.name, timeout=90)  # SIGTERM; SIGKILL only after 40 s
            stopped_s = time.monotonic() - started
            stop.set()
            outcomes: Counter[str] = sum((f.result() for f in futures), Counter())
        state, log = container.state(), container.logs()
    assert_nothing_lost(outcomes, clients)
    # PID 1 of its namespace: the re-raised SIGTERM of uvicorn is ignored, so the exit is 0 (143
    # where an init forwards it); 137 would be the SIGKILL after the stop timeout.
    assert state["ExitCode"] in {0, 143} and stopped_s < 30, (state, stopped_s, log[-3000:])
    assert '"msg": "draining"' in log and '"msg": "stopped"' in log, log[-3000:]


# A missing or corrupt bundle: the process exits non-zero and its log names what is wrong (the CLI's
# one line, status 2, for what it finds before the server starts; EXIT_LOAD_FAILED for a load that
# fails inside the server), so the restart policy or the kubelet shows the failure.
@pytest.mark.parametrize(("broken", "reason"), [
    ("missing", "/bundles/broken: no manifest.json"),
    ("corrupt", "/bundles/broken/model.onnx"),
])
def test_unloadable_bundle_exits_non_zero_with_the_reason(podman: Podman, cpu_image: str, tmp_path: Path,
                                                         broken: str, reason: str) -> None:
    options: tuple[str, ...] = ()
    if broken == "corrupt":
        bundle = readable_copy(DEFAULT_BUNDLE, tmp_path / "corrupt")
        onnx = bundle / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # a truncated download
        options = ("--mount", f"type=bind,source={bundle},target=/bundles/broken,readonly")
    env = {"DELTAGATE_BUNDLE_PATH": "/bundles/broken"}
    with run_container(podman, cpu_image, *options, env=env, ready=False) as container:
        exit_status = container.wait_exit(timeout_s=120)
        log = container.logs()
    assert exit_status in {2, EXIT_LOAD_FAILED}, log[-3000:]
    assert reason in log, log[-3000:]


@pytest.mark.parametrize("cpus", [1, 2])
def test_thread_pools_follow_the_cpu_quota(podman: Podman, cpu_image: str, cpus: int) -> None:
    available = len(os.sched_getaffinity(0))
    if cpus > available:
        pytest.skip(f"--cpus {cpus} needs {cpus} CPUs; this machine has {available}")
    with run_container(podman, cpu_image, "--cpus", str(cpus)) as container:
        batching = container.get("/model").json()["batching"]
        log = container.logs()
    assert batching["cpu_budget"] == cpus, batching
    assert batching["instances"] * batching["intra_op_threads"] <= cpus, batching
    assert batching["decode_workers"] <= cpus, batching
    assert f'"cpu_budget": {cpus}' in log  # the "ready" line says what the pools were sized from
