"""The service never imports the training side (``models.train``) nor the proxy research (``proxy``), checked in a
fresh process (``tests/unit/test_layering.py`` checks the import statements)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

# Serves one PNG through the whole app (lifespan, /classify) in a fresh process; each script below
# adds what it checks in sys.modules afterwards.
_CLASSIFY = """
import asyncio, io, sys
import httpx, numpy as np
from PIL import Image
from service.app import create_app
from service.settings import Settings

async def classify(bundle, engine):
    app = create_app(Settings(engine=engine, bundle_path=bundle, device="cpu"))
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_started()
        buf = io.BytesIO(); Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, "PNG")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/classify", files=[("file", ("a.png", buf.getvalue(), "image/png"))])
            assert r.status_code == 200, r.text
            return (await client.get("/model")).json()["engine"]
"""

SCRIPT = _CLASSIFY + """
for engine in ("torch", "onnx"):
    asyncio.run(classify(sys.argv[1], engine))
loaded = sorted(m for m in sys.modules if m in ("models.train", "proxy") or m.startswith(("models.train.", "proxy.")))
heavy = sorted(m for m in ("onnx", "onnxscript", "sklearn", "matplotlib") if m in sys.modules)
print("LOADED", loaded, heavy)
sys.exit(1 if loaded or heavy else 0)
"""


def test_serving_a_real_bundle_loads_no_training_module(tiny_bundle: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_bundle)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED [] []" in proc.stdout


ONNX_ONLY_SCRIPT = _CLASSIFY + """
assert asyncio.run(classify(sys.argv[1], sys.argv[2])) == "onnx"
print("HEAVY", sorted(m for m in ("torch", "open_clip", "torchvision", "safetensors") if m in sys.modules))
"""


@pytest.mark.parametrize("engine", ["onnx", "auto"])
def test_serving_on_onnx_imports_neither_torch_nor_open_clip(tiny_bundle: Path, engine: str) -> None:
    proc = subprocess.run([sys.executable, "-c", ONNX_ONLY_SCRIPT, str(tiny_bundle), engine], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
