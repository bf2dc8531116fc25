"""docker-compose.yml, unchanged, brought up by podman-compose: the service and Prometheus.

The service image is the one built from docker/Dockerfile.cpu on this tree (tagged with the
compose file's image name, as ``up --build`` would); Prometheus is the compose file's image, or a
stand-in built from Debian's package where the registry cannot be reached
(deploy/containers/standin.py). Grafana is not in Debian and is not run: its missing-password
guard is exercised (``up`` stops with its message), and its files are checked against Grafana
11.1's schema in tests/unit/test_deploy_files.py.

Ports: ``BIND_ADDRESS`` (a loopback address of this run's own) and ``DELTAGATE_HOST_PORT`` are the
compose file's own knobs; they keep concurrent runs on one machine apart.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.containers.engine import ROOT, Podman, exclusive
from deploy.containers.standin import compose_image, prometheus_image
from tests.container.conftest import unique_name
from tests.container.test_cpu_image import parity_files
from tests.server_process import free_test_port
from tests.unit.deploy.conftest import require_tool

COMPOSE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "docker/prometheus/alerts.yml"
SERVICE = "deltagate"
PROMETHEUS_PORT = 9090  # docker-compose.yml publishes it on ${BIND_ADDRESS}
SCRAPE_WAIT_S = 90.0


def podman_compose() -> str:
    beside = Path(sys.executable).with_name("podman-compose")
    return str(beside) if beside.exists() else require_tool("podman-compose")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    bind: str
    port: int

    def compose(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        cmd = [podman_compose(), "--file", str(COMPOSE), "--project-name", self.project, *args]
        proc = subprocess.run(cmd, env=self.env if env is None else env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    @property
    def service_url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.bind}:{PROMETHEUS_PORT}"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's naming


def loopback_address() -> str:
    """A 127/8 address of this process's own (Linux answers on all of 127/8), not 127.0.0.x."""
    pid = os.getpid()
    return f"127.{20 + pid % 200}.{(pid // 200) % 250}.1"


def compose_file() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def stack(podman: Podman, cpu_image: str, base_image: str, engine_log: Path) -> Iterator[Stack]:
    prometheus_image(podman, compose_image("prometheus"), base_image, log_path=engine_log)
    env = {**podman.env(), "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12), "BIND_ADDRESS": loopback_address(),
           "DELTAGATE_HOST_PORT": str(free_test_port())}
    stack = Stack(unique_name("compose").replace("-", "_"), env, env["BIND_ADDRESS"], int(env["DELTAGATE_HOST_PORT"]))
    image = f"localhost/{compose_file()['services'][SERVICE]['image']}"
    with exclusive(image):  # the compose file names the image deltagate:cpu: one run moves that tag at a time
        podman("tag", cpu_image, image)
        stack.compose("up", "--detach", SERVICE, "prometheus")
    try:
        yield stack
    finally:
        stack.compose("down", "--volumes", check=False)


def poll(fetch: Any, done: Any, timeout_s: float, what: str) -> Any:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            last = fetch()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if done(last):
                return last
        time.sleep(1.0)
    raise AssertionError(f"{what} not within {timeout_s} s; last: {str(last)[:3000]}")


def prometheus_get(stack: Stack, path: str, **params: str) -> Any:
    r = httpx.get(stack.prometheus_url + path, params=params, timeout=10.0)
    r.raise_for_status()
    return r.json()["data"]


def test_prometheus_scrapes_the_service_and_has_its_series(stack: Stack) -> None:
    health = poll(lambda: httpx.get(stack.service_url + "/readyz", timeout=5.0), lambda r: r.status_code == 200,
                  120.0, "the compose service ready")
    assert health.json()["status"] == "ready"
    r = httpx.post(stack.service_url + "/classify", files=parity_files(), timeout=60.0)
    assert r.status_code == 200, r.text  # labelled series (per route, per decision) now exist
    exposition = httpx.get(stack.service_url + "/metrics", timeout=10.0).text
    exported = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples
                if s.name.startswith("deltagate_")}
    assert exported

    def up_targets() -> list[dict[str, Any]]:
        return [t for t in prometheus_get(stack, "/api/v1/targets")["activeTargets"]
                if t["labels"]["job"] == SERVICE]

    (target,) = poll(up_targets, lambda ts: ts and all(t["health"] == "up" for t in ts), SCRAPE_WAIT_S,
                     "the deltagate target up")
    assert target["scrapeUrl"] == f"http://{SERVICE}:8000/metrics"  # the compose service name, over its network

    def stored() -> set[str]:
        series = prometheus_get(stack, "/api/v1/series", **{"match[]": f'{{job="{SERVICE}",__name__=~"deltagate_.+"}}'})
        return {s["__name__"] for s in series}

    names = poll(stored, lambda got: exported <= got, SCRAPE_WAIT_S, "every exported deltagate_* series stored")
    assert exported <= names


def test_prometheus_loads_and_evaluates_the_alert_rules(stack: Stack) -> None:
    rules_file = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    expected = {r.get("alert") or r["record"] for g in rules_file["groups"] for r in g["rules"]}

    def loaded() -> list[dict[str, Any]]:
        return [r for g in prometheus_get(stack, "/api/v1/rules")["groups"] for r in g["rules"]]

    # every rule evaluated at least once (evaluation_interval 15 s), none in error
    rules = poll(loaded, lambda rs: rs and all(r.get("lastEvaluation", "").startswith("20") for r in rs),
                 SCRAPE_WAIT_S, "every rule evaluated")
    assert {r["name"] for r in rules} == expected
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_compose_service_runs_hardened_and_turns_healthy(stack: Stack, podman: Podman) -> None:
    name = stack.container(SERVICE)
    (info,) = podman.inspect(name)
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in (host.get("Tmpfs") or {}), host.get("Tmpfs")
    assert info["EffectiveCaps"] in (None, []), info["EffectiveCaps"]
    assert any("no-new-privileges" in opt for opt in host.get("SecurityOpt") or []), host.get("SecurityOpt")
    assert host["RestartPolicy"]["Name"] == compose_file()["services"][SERVICE]["restart"]
    poll(lambda: httpx.get(stack.service_url + "/readyz", timeout=5.0), lambda r: r.status_code == 200, 120.0,
         "the compose service ready")
    check = podman("healthcheck", "run", name, check=False)  # compose's healthcheck, run as its timer would
    assert check.returncode == 0, check.stdout + check.stderr
    assert podman.state(name)["Health"]["Status"] == "healthy"


@pytest.mark.parametrize("password", [None, ""])
def test_grafana_without_a_password_stops_up_with_its_message(podman: Podman, password: str | None) -> None:
    env = {k: v for k, v in podman.env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password  # `:?` refuses an empty value too
    stack = Stack(unique_name("guard").replace("-", "_"), env, loopback_address(), free_test_port())
    proc = stack.compose("up", "--detach", check=False, timeout=120)
    message = compose_file()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].split(":?", 1)[1]
    assert proc.returncode != 0
    assert message.rstrip("}") in proc.stderr, proc.stderr[-3000:]
    created = podman("ps", "--all", "--quiet", "--filter", f"label=io.podman.compose.project={stack.project}")
    assert created.stdout.strip() == ""  # nothing was started
