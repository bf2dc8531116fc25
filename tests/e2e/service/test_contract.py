"""The OpenAPI document matches the service: schemathesis, all checks, against a live server.

The server is a real ``deltagate serve`` on the default bundle (default engine) on 127.0.0.1; the
run is bounded (``--max-examples``, a fixed seed, no shrinking) so it fits in CI. Run once without
an API key (no security may be declared) and once with one (it must be declared and enforced).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_process import DEFAULT_BUNDLE, serving

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 10  # per operation and phase: bounded for CI
API_KEY = "contract-test-key"


def schemathesis_cli() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert exe is not None, "schemathesis is in the dev extra: pip install -e '.[dev]'"
    return [exe]


@pytest.mark.parametrize("api_key", [None, API_KEY], ids=["no-key", "with-key"])
def test_schemathesis_finds_no_failure(tmp_path: Path, api_key: str | None) -> None:
    env = {"DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE), "DELTAGATE_LOG_LEVEL": "warning"}
    auth: list[str] = []
    if api_key is not None:
        env["DELTAGATE_API_KEY"] = api_key
        auth = ["--header", f"Authorization: Bearer {api_key}"]
    with serving(tmp_path / "server.log", env) as server:
        schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
        declared = {m: op.get("security") for path in schema["paths"].values() for m, op in path.items()}
        if api_key is None:
            assert "securitySchemes" not in schema.get("components", {}) and not any(declared.values())
        else:
            assert schema["components"]["securitySchemes"] and any(declared.values())
        cmd = [*schemathesis_cli(), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
               "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "7", "--no-shrink",
               "--request-timeout", "30", *auth]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or " passed" in proc.stdout, proc.stdout[-3000:]
