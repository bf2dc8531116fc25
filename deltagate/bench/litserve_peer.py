"""The LitServe peer's API (see :mod:`deltagate.bench.peers`): a module of its own because LitServe
pickles the API into its worker processes, and because it imports ``litserve`` (the bench extra).

No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation at
run time, and only the class :class:`fastapi.Request` itself (not the string) makes it parse the
multipart form.
"""

from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from fastapi import Request

from deltagate.bench.peers import answer_of, pixels_of, session_of
from models.bundle import load_bundle
from models.scoring_module import INPUT_NAME, OUTPUT_NAMES

__all__ = ["ClassifyAPI"]


class ClassifyAPI(ls.LitAPI):
    """LitServe's stages: decode_request -> batch -> predict -> unbatch -> encode_response.

    Args:
        bundle_path: the bundle whose ``model.onnx`` is served.
        **kwargs: LitAPI options (``max_batch_size``, ``batch_timeout``, ``api_path``).
    """

    def __init__(self, bundle_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bundle_path = bundle_path

    def setup(self, device: str) -> None:
        self.bundle = load_bundle(self.bundle_path)
        self.session = session_of(self.bundle)

    def decode_request(self, request: Request) -> np.ndarray:  # LitServe passes the parsed form
        form: Any = request  # the form LitServe parsed from the Request (field name -> UploadFile)
        return pixels_of(self.bundle, form["file"].file.read())  # (3, H, W)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)  # (B, 3, H, W)

    def predict(self, x: np.ndarray) -> list[tuple[np.ndarray, float]]:
        logits, _, delta_energy, _ = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return list(zip(logits, delta_energy, strict=True))

    def unbatch(self, output: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
        return output

    def encode_response(self, output: tuple[np.ndarray, float]) -> dict[str, Any]:
        return answer_of(self.bundle, output[0], output[1])
