"""The peers ``bench compare`` runs deltagate against, written as their users would write them.

Both serve ``POST /classify`` (one multipart image in field ``file``) on the bundle's ``model.onnx``
with the bundle's own preprocessing (:func:`models.preprocess.decode_and_preprocess`, full decode), and
answer the label and ΔEnergy, so every server does the same work per image:

- ``plain``: a FastAPI app with a sync route, so Starlette runs ``session.run`` in its thread pool;
  no batching, ONNX Runtime's default session options. This is the app most tutorials show.
- ``litserve``: a :class:`litserve.LitAPI` with ``max_batch_size=8`` and ``batch_timeout=5 ms``
  (LitServe's batching; the values of the issue's first measurement), one CPU worker.

Run one with ``python -m deltagate.bench.peers {plain,litserve} --bundle DIR --port N`` (the bench
does so in a subprocess). LitServe is in the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, UploadFile

from models.bundle import Bundle, load_bundle
from models.preprocess import decode_and_preprocess
from models.scoring_module import INPUT_NAME, OUTPUT_NAMES

__all__ = [
    "PEERS", "LITSERVE_MAX_BATCH", "LITSERVE_BATCH_TIMEOUT_S", "session_of", "pixels_of", "answer_of", "plain_app",
    "run_peer",
]

logger = logging.getLogger(__name__)

PEERS = ("plain", "litserve")
LITSERVE_MAX_BATCH = 8  # LitServe's max_batch_size (the same batch as deltagate's bench settings)
LITSERVE_BATCH_TIMEOUT_S = 0.005  # LitServe's batch_timeout: how long its loop gathers a batch


def session_of(bundle: Bundle) -> Any:
    """An ONNX Runtime session on the bundle's ``model.onnx`` with the default options (CPU)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])


def pixels_of(bundle: Bundle, data: bytes) -> np.ndarray:
    """One encoded image through the bundle's decode and preprocessing."""
    return decode_and_preprocess(data, bundle.manifest.preprocess)  # (3, H, W)


def answer_of(bundle: Bundle, logits: np.ndarray, delta_energy: float) -> dict[str, Any]:
    """One image's answer from its (K,) logits: the label and ΔEnergy."""
    return {"label": bundle.manifest.classes[int(np.argmax(logits))], "delta_energy": float(delta_energy)}


def plain_app(bundle_path: Path) -> FastAPI:
    """The plain FastAPI app: decode, preprocess and one ``session.run`` per request, in the thread pool."""
    bundle = load_bundle(bundle_path)
    session = session_of(bundle)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    # A sync route: Starlette runs it in its thread pool. (UploadFile is imported at module level:
    # FastAPI resolves these annotations, postponed by `from __future__ import annotations`, there.)
    def classify(file: UploadFile) -> dict[str, Any]:
        x = pixels_of(bundle, file.file.read())[None]  # (1, 3, H, W)
        logits, _, delta_energy, _ = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return answer_of(bundle, logits[0], delta_energy[0])

    return app


def run_peer(kind: str, bundle_path: Path, host: str, port: int) -> None:
    """Serve one peer until SIGTERM.

    Args:
        kind: ``plain`` or ``litserve``.
        bundle_path: the bundle whose ``model.onnx`` is served.
        host: bind address.
        port: bind port.
    """
    if kind == "plain":
        import uvicorn

        uvicorn.run(plain_app(bundle_path), host=host, port=port, log_level="warning", access_log=False)
    elif kind == "litserve":
        import litserve as ls

        from deltagate.bench.litserve_peer import ClassifyAPI

        api = ClassifyAPI(bundle_path, max_batch_size=LITSERVE_MAX_BATCH, batch_timeout=LITSERVE_BATCH_TIMEOUT_S,
                          api_path="/classify")
        server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
        server.run(host=host, port=port, log_level="warning", generate_client_file=False)
    else:
        raise ValueError(f"unknown peer {kind!r}; valid peers: {', '.join(PEERS)}")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=PEERS)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_peer(args.kind, args.bundle, args.host, args.port)


if __name__ == "__main__":  # LitServe starts its workers as spawned processes: keep the guard
    _main()
