"""Deployment files agree with the service and with each other.

docker/Dockerfile.{cpu,cpu-torch,cuda}, docker-compose.yml, docker/prometheus/prometheus.yml and the Grafana
provisioning are parsed (no Docker engine needed) and cross-checked: one port everywhere, the
probe and scrape paths are real routes, every ``DELTAGATE_*`` variable is a valid setting, and
every metric the dashboard queries is one the service exports.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from deploy.containers.engine import dockerignore_allowlist
from service.app import create_app
from service.engines.dummy import dummy_bundle
from service.metrics import ServiceMetrics
from service.settings import Settings

yaml = pytest.importorskip("yaml")  # PyYAML: present through the dev dependencies (huggingface_hub)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {name: ROOT / f"docker/Dockerfile.{name}" for name in ("cpu", "cpu-torch", "cuda")}
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "docker/prometheus/prometheus.yml"
GRAFANA = ROOT / "docker/grafana"
SERVICE, GPU_SERVICE = "deltagate", "deltagate-gpu"


# --- parsing helpers ----------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    pairs = []
    for instr in joined:
        keyword, _, args = instr.partition(" ")
        pairs.append((keyword.upper(), args.strip()))
    return pairs


def runtime_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the last stage (what the image runs)."""
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def deltagate_env(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("DELTAGATE_").lower(): v for k, v in env.items() if k.startswith("DELTAGATE_")}


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def routes() -> set[str]:
    app = create_app(Settings(engine="dummy", bundle_path=Path("/nonexistent")))  # no lifespan: nothing loads
    return set(app.openapi()["paths"])


@pytest.fixture(scope="module")
def exported_metric_names() -> set[str]:
    """Every sample name the service's registry exposes (``_total``, ``_bucket``, ... included)."""
    metrics = ServiceMetrics(max_batch_size=16)
    metrics.bind_model(dummy_bundle(4).manifest, {"engine": "dummy", "device": "cpu", "precision": "float32"})
    metrics.observe_request("/classify", "POST", 200, 0.01)  # labelled series appear once used
    return {s.name for family in metrics.registry.collect() for s in family.samples}


# --- Dockerfiles --------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_runs_deltagate_serve_as_non_root_with_valid_settings(flavour: str) -> None:
    from deltagate.cli import app as cli_app

    stage = runtime_stage(DOCKERFILES[flavour])
    cmd = exec_form(next(a for k, a in stage if k == "CMD"))
    assert cmd[:2] == ["deltagate", "serve"]
    assert cmd[1] in {c.name or (c.callback.__name__ if c.callback else "") for c in cli_app.registered_commands}
    user = next(a for k, a in stage if k == "USER")
    assert user.split(":")[0] not in {"0", "root"}
    env = deltagate_env(env_of(stage))
    unknown = set(env) - set(Settings.model_fields)
    assert not unknown, f"{flavour}: ENV sets unknown settings {unknown}"
    settings = Settings(**env)  # type: ignore[arg-type]  # strings validate like env vars
    assert settings.bundle_path.is_absolute()
    assert [a for k, a in stage if k == "EXPOSE"] == [str(settings.port)]


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_healthcheck_probes_readiness(flavour: str, routes: set[str]) -> None:
    """Healthy = ready: a loading container is not healthy (a failed load exits the process)."""
    stage = runtime_stage(DOCKERFILES[flavour])
    check = next(a for k, a in stage if k == "HEALTHCHECK")
    probe = " ".join(exec_form(check.split(" CMD ", 1)[1]))
    paths = re.findall(r"'(/[a-z]+)'", probe)
    assert paths == ["/readyz"] and "/readyz" in routes
    port_default = re.search(r"get\('DELTAGATE_PORT', '(\d+)'\)", probe)
    assert port_default is not None and int(port_default.group(1)) == Settings.model_fields["port"].default


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_copies_only_what_dockerignore_lets_through(flavour: str) -> None:
    allowed = set(dockerignore_allowlist(ROOT))
    stage_args = dict.fromkeys(["BUNDLE_DIR"], "bundles/default")
    for keyword, args in dockerfile_instructions(DOCKERFILES[flavour]):
        if keyword != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for src in sources:
            src = src.replace("${BUNDLE_DIR}", stage_args["BUNDLE_DIR"])
            assert src in allowed, f"{flavour}: COPY {src} is excluded by .dockerignore"
            if src != "bundles/default":  # produced by `deltagate` offline; may not be built yet
                assert (ROOT / src).exists()


# --- compose and Prometheus ---------------------------------------------------------------------
def test_compose_service_port_matches_settings_and_prometheus_target(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services[SERVICE]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert services[GPU_SERVICE]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert "gpu" in services[GPU_SERVICE]["profiles"] and "profiles" not in services[SERVICE]
    devices = services[GPU_SERVICE]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]

    prom = load_yaml(PROMETHEUS)
    jobs = {j["job_name"]: [t for g in j["static_configs"] for t in g["targets"]] for j in prom["scrape_configs"]}
    for name in (SERVICE, GPU_SERVICE):
        targets = jobs[name]  # one job per service: the alert rules watch job="deltagate"
        env = deltagate_env({k: str(v) for k, v in services[name]["environment"].items()})
        assert not set(env) - set(Settings.model_fields), f"{name}: unknown settings"
        port = Settings(**env).port  # type: ignore[arg-type]
        container_ports = {str(p).rsplit(":", 1)[-1] for p in services[name]["ports"]}
        assert container_ports == {str(port)}
        assert f"{name}:{port}" in targets


def test_prometheus_scrapes_the_metrics_route(routes: set[str]) -> None:
    prom = load_yaml(PROMETHEUS)
    for job in (j for j in prom["scrape_configs"] if j["job_name"].startswith("deltagate")):
        assert job.get("metrics_path", "/metrics") in routes


def test_compose_mounts_the_files_it_names(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"missing {source}"


def test_compose_services_restart_and_report_readiness(compose: dict[str, Any], routes: set[str]) -> None:
    for name in (SERVICE, GPU_SERVICE):
        service = compose["services"][name]
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}  # a dead process comes back
        probe = " ".join(service["healthcheck"]["test"])
        assert re.findall(r"'(/[a-z]+)'", probe) == ["/readyz"]
        assert service["read_only"] is True and any(t.startswith("/tmp") for t in service["tmpfs"])
        assert service["cap_drop"] == ["ALL"]
        graceful = Settings(**deltagate_env({k: str(v) for k, v in service["environment"].items()})).graceful_shutdown_s  # type: ignore[arg-type]
        assert float(service["stop_grace_period"].rstrip("s")) > graceful


def test_compose_ports_bind_to_localhost_unless_configured(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} binds all interfaces"


def test_images_compose_and_kubernetes_bind_every_interface_explicitly(compose: dict[str, Any]) -> None:
    """The service binds 127.0.0.1 unless told otherwise; in a container it must listen on every interface
    (the port mapping or the Service decides who reaches it), so each deployment says so itself."""
    assert Settings.model_fields["host"].default == "127.0.0.1"
    for flavour, path in DOCKERFILES.items():
        stage = runtime_stage(path)
        cmd = exec_form(next(a for k, a in stage if k == "CMD"))
        assert env_of(stage).get("DELTAGATE_HOST") == "0.0.0.0" or "--host" in cmd, flavour
    for name in (SERVICE, GPU_SERVICE):
        assert str(compose["services"][name]["environment"]["DELTAGATE_HOST"]) == "0.0.0.0", name
    deployment = load_yaml(ROOT / "deploy/k8s/base/deployment.yaml")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "deltagate"]
    assert {e["name"]: e.get("value") for e in container["env"]}["DELTAGATE_HOST"] == "0.0.0.0"


def test_grafana_has_no_anonymous_access_and_no_default_password(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # `${VAR:?message}`: compose refuses to start while the password is unset or empty
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


# --- images: slim, CUDA, lint -------------------------------------------------------------------
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_slim_image_installs_no_torch_and_guards_it() -> None:
    text = DOCKERFILES["cpu"].read_text(encoding="utf-8")
    runs = " && ".join(a for k, a in dockerfile_instructions(DOCKERFILES["cpu"]) if k == "RUN")
    installs = [c.strip() for c in runs.split("&&") if "pip install" in c]
    # the core install only: the core requirements (no extra named), then the project without deps
    assert installs == ["pip install -r requirements.txt", "pip install --no-deps ."], installs
    assert "python pyproject_deps.py pyproject.toml > requirements.txt" in runs
    assert "slim image must not contain" in text  # ... and the build fails if torch came anyway
    assert env_of(runtime_stage(DOCKERFILES["cpu"]))["DELTAGATE_ENGINE"] == "onnx"
    assert env_of(runtime_stage(DOCKERFILES["cpu-torch"]))["DELTAGATE_ENGINE"] == "torch"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_code_is_copied(flavour: str) -> None:
    """Cache-friendly layers: a code change rebuilds the project's layer, not the dependencies'."""
    build = dockerfile_instructions(DOCKERFILES[flavour])
    build = build[: max(i for i, (k, _) in enumerate(build) if k == "FROM")]  # the build stage
    deps = next(i for i, (k, a) in enumerate(build) if k == "RUN" and "pip install -r requirements.txt" in a)
    code = [i for i, (k, a) in enumerate(build) if k == "COPY" and a.split()[0] in {"models", "service", "deltagate"}]
    copied_before = [a for k, a in build[:deps] if k == "COPY"]
    assert copied_before == ["pyproject.toml docker/pyproject_deps.py ./"], copied_before
    assert code and min(code) > deps
    project = [a for k, a in build if k == "RUN" and "pip install --no-deps ." in a]
    assert len(project) == 1


def test_pyproject_deps_lists_the_core_and_expands_extras() -> None:
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        from pyproject_deps import requirements
    finally:
        sys.path.remove(str(ROOT / "docker"))
    project = pyproject()["project"]
    core = project["dependencies"]
    assert requirements(ROOT / "pyproject.toml", []) == core
    train = requirements(ROOT / "pyproject.toml", ["train"])  # "deltagate[torch]" inside it is expanded
    assert train[: len(core)] == core
    assert set(project["optional-dependencies"]["torch"]) <= set(train)
    assert not [r for r in train if r.startswith(project["name"] + "[")]
    assert len(train) == len(set(train))
    with pytest.raises(SystemExit, match="no extra 'nope'"):
        requirements(ROOT / "pyproject.toml", ["nope"])


def test_docs_image_table_is_the_measured_one() -> None:
    from deploy.image_sizes import DOCS, docs_table, sizes_table

    results = json.loads((ROOT / "results/image_sizes.json").read_text(encoding="utf-8"))
    assert docs_table(DOCS.read_text(encoding="utf-8")) == sizes_table(results), (
        "docs/deployment.md's image table is stale: "
        "python -m deploy.image_sizes --table results/image_sizes.json --docs")
    assert {"cpu", "cuda", "cpu-torch"} <= set(results["images"])
    for image in results["images"].values():  # each number says which command produced it
        assert image["command"].startswith("python -m deploy.image_sizes ")
    assert results["images"]["cpu"]["built"] and results["images"]["cpu"]["ready_s"]["rounds"]


def test_torch_images_pin_the_project_torch() -> None:
    pins = {d.split("==")[0]: d for d in pyproject()["project"]["dependencies"] + sum(
        pyproject()["project"]["optional-dependencies"].values(), []) if d.startswith(("torch==", "torchvision=="))}
    assert set(pins) == {"torch", "torchvision"}
    for flavour in ("cpu-torch", "cuda"):
        runs = " ".join(a for k, a in dockerfile_instructions(DOCKERFILES[flavour]) if k == "RUN")
        for pin in pins.values():
            assert pin in runs, f"{flavour}: {pin} not installed"


def test_cuda_image_matches_the_cuda_13_wheels_and_checks_a_real_session() -> None:
    instructions = dockerfile_instructions(DOCKERFILES["cuda"])
    bases = [a for k, a in instructions if k == "FROM"]
    assert not any("nvidia/cuda" in b for b in bases), "the pip wheels bring CUDA 13; no CUDA 12 base"
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:")
    gpu_extra = pyproject()["project"]["optional-dependencies"]["gpu"]
    (gpu,) = [r for r in gpu_extra if r.startswith("onnxruntime-gpu")]
    assert any(r.startswith("nvidia-ml-py") for r in gpu_extra)  # NVML utilisation of the GPU run, in the image
    # onnxruntime-gpu 1.27 is the first release whose `cuda` extra needs CUDA 13 (1.26: CUDA 12)
    pin = re.fullmatch(r"onnxruntime-gpu\[cuda,cudnn\]>=1\.(\d+),<2", gpu)
    assert pin is not None and int(pin.group(1)) >= 27, gpu
    runs = [a for k, a in runtime_stage(DOCKERFILES["cuda"]) if k == "RUN"]
    assert any(r.startswith("python /app/check_cuda.py") for r in runs)
    assert ("COPY", "docker/check_cuda.py /app/check_cuda.py") in runtime_stage(DOCKERFILES["cuda"])


def test_cuda_check_skips_without_a_gpu_unless_required() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the skip path does not apply")
    script = str(ROOT / "docker/check_cuda.py")
    skipped = subprocess.run([sys.executable, script, str(ROOT / "bundles/default")], capture_output=True,
                             text=True, timeout=120, check=False)
    assert skipped.returncode == 0 and "skipped" in skipped.stderr
    required = subprocess.run([sys.executable, script, "--require-gpu"], capture_output=True, text=True,
                              timeout=120, check=False)
    assert required.returncode == 2


def test_dockerfiles_pass_hadolint() -> None:
    from tests.unit.deploy.conftest import require_tool

    tool = Path(sys.executable).with_name("hadolint")
    hadolint = str(tool) if tool.exists() else require_tool("hadolint")
    standins = sorted((ROOT / "deploy/containers").glob("*.Containerfile"))  # the test suite's stand-in images
    proc = subprocess.run([hadolint, *map(str, [*DOCKERFILES.values(), *standins])], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Grafana ------------------------------------------------------------------------------------
# Grafana is not in Debian and is not run (tests/container runs the service and Prometheus): its
# files are checked against Grafana 11.1's schema instead. Provisioning: the fields of Grafana's
# provisioning file format, apiVersion 1 (its pkg/services/provisioning types; docs
# "Provision Grafana", v11.1), unknown fields refused. Dashboard: grafana-foundation-sdk's models
# generated from Grafana 11.1's schema, a round trip that must keep every field and value.
class _GrafanaFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Datasource(_GrafanaFile):
    name: str
    type: str
    access: Literal["proxy", "direct"] = "proxy"
    orgId: int = 1
    orgName: str = ""
    uid: str = ""
    url: str = ""
    user: str = ""
    database: str = ""
    basicAuth: bool = False
    basicAuthUser: str = ""
    withCredentials: bool = False
    isDefault: bool = False
    correlations: list[dict[str, Any]] = []
    jsonData: dict[str, Any] = {}
    secureJsonData: dict[str, str] = {}
    version: int = 0
    editable: bool = False


class _DeleteDatasource(_GrafanaFile):
    name: str
    orgId: int = 1
    orgName: str = ""


class _DatasourcesFile(_GrafanaFile):
    apiVersion: Literal[1]
    datasources: list[_Datasource] = []
    deleteDatasources: list[_DeleteDatasource] = []


class _FileProviderOptions(_GrafanaFile):
    path: str
    foldersFromFilesStructure: bool = False


class _DashboardProvider(_GrafanaFile):
    name: str
    type: Literal["file"] = "file"
    orgId: int = 1
    folder: str = ""
    folderUid: str = ""
    editable: bool = False
    disableDeletion: bool = False
    updateIntervalSeconds: int = 10
    allowUiUpdates: bool = False
    options: _FileProviderOptions


class _DashboardsFile(_GrafanaFile):
    apiVersion: Literal[1]
    providers: list[_DashboardProvider]


@pytest.mark.parametrize(("path", "schema"), [
    ("provisioning/datasources/prometheus.yml", _DatasourcesFile),
    ("provisioning/dashboards/deltagate.yml", _DashboardsFile),
])
def test_grafana_provisioning_files_match_grafanas_format(path: str, schema: type[BaseModel]) -> None:
    schema.model_validate(load_yaml(GRAFANA / path))


def test_grafana_provisioning_schema_refuses_what_grafana_would_not_read() -> None:
    good = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")
    for bad in ({**good, "datasource": good["datasources"]},  # a misspelt key
                {**good, "datasources": [{**good["datasources"][0], "isDefault": "yes"}]}):  # a wrong type
        with pytest.raises(ValidationError):
            _DatasourcesFile.model_validate(bad)


def _lost_in_round_trip(source: Any, parsed: Any, path: str = "") -> list[str]:
    """Where ``parsed`` (the model's JSON) dropped or changed what ``source`` says; defaults it
    added are fine."""
    lost: list[str] = []
    if isinstance(source, dict) and isinstance(parsed, dict):
        for key, value in source.items():
            where = f"{path}/{key}"
            lost += [f"{where}: dropped"] if key not in parsed else _lost_in_round_trip(value, parsed[key], where)
        return lost
    if isinstance(source, list) and isinstance(parsed, list) and len(source) == len(parsed):
        for i, (a, b) in enumerate(zip(source, parsed, strict=True)):
            lost += _lost_in_round_trip(a, b, f"{path}[{i}]")
        return lost
    return [] if source == parsed else [f"{path}: {source!r} became {parsed!r}"]


def test_dashboard_round_trips_through_grafana_11_1_models() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog import plugins, runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()  # every panel type's options and each datasource's query schema
    source = dashboard()
    unknown_types = {p["type"] for p in source["panels"]} - {
        p["type"] for p in source["panels"] if runtime.panelcfg_config(p["type"]) is not None}
    assert not unknown_types, f"panel types Grafana 11.1 does not ship: {unknown_types}"
    parsed = json.loads(json.dumps(Dashboard.from_json(source), cls=JSONEncoder))
    assert not _lost_in_round_trip(source, parsed)
    broken = json.loads(json.dumps(source))
    broken["panels"][0]["gridpos"] = broken["panels"][0].pop("gridPos")  # what the check exists for
    reparsed = json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder))
    assert _lost_in_round_trip(broken, reparsed) == ["/panels[0]/gridpos: dropped"]


def test_grafana_datasource_points_at_compose_prometheus(compose: dict[str, Any]) -> None:
    datasources = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    (ds,) = [d for d in datasources if d["type"] == "prometheus"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()  # type: ignore[union-attr]
    assert host in compose["services"]
    assert any(str(p).endswith(f":{port}") for p in compose["services"][host]["ports"])


def test_grafana_dashboard_is_provisioned_from_the_mounted_folder(compose: dict[str, Any]) -> None:
    provider = load_yaml(GRAFANA / "provisioning/dashboards/deltagate.yml")["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    source = next(src for src, target in mounts.items() if target == provider["options"]["path"])
    assert (ROOT / source / "deltagate.json").is_file()
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/deltagate.json"


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards/deltagate.json").read_text(encoding="utf-8"))


def test_dashboard_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    dash = dashboard()
    datasources = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    uids = {d["uid"] for d in datasources}
    assert dash["uid"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] in uids and panel["targets"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")")


def test_dashboard_queries_only_metrics_the_service_exports(exported_metric_names: set[str]) -> None:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bdeltagate_[a-z_]+\b", e)}
    assert used, "the dashboard queries no deltagate metric"
    assert not used - exported_metric_names, f"not exported by service.metrics: {used - exported_metric_names}"


def test_dashboard_covers_the_required_views() -> None:
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for needed in ("deltagate_http_requests_total", "deltagate_http_request_duration_seconds_bucket",
                   "deltagate_batch_size_images", "deltagate_queue_depth_images", "deltagate_ood_flags_total",
                   "deltagate_gate_score_bucket"):
        assert needed in exprs
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(deltagate_http_request_duration" in exprs
    assert "heatmap" in {p["type"] for p in dashboard()["panels"]}
