"""An ONNX engine whose forwards wait while a file exists: a live server's admission budget can then be held
full on purpose (tests/e2e/deltagate/test_client.py), with no sleep and no race.

A server process uses it when ``service.engines.ENGINES["onnx"]`` points here before ``deltagate serve``
starts (:data:`GATED_SERVE`); the file is named by ``GATED_ENGINE_FILE`` in the server's environment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from service.engines.base import EngineOutputs
from service.engines.onnx_engine import OnnxEngine

__all__ = ["GatedOnnxEngine", "GATED_SERVE", "GATE_ENV"]

GATE_ENV = "GATED_ENGINE_FILE"
# `python -c GATED_SERVE serve ...`: deltagate serve with this engine behind the name "onnx".
GATED_SERVE = ("from service import engines; engines.ENGINES['onnx'] = 'tests.gated_engine:GatedOnnxEngine'; "
               "from deltagate.cli import cli_main; cli_main()")


class GatedOnnxEngine(OnnxEngine):
    """:class:`OnnxEngine` whose ``infer`` first waits (at most 60 s) while ``$GATED_ENGINE_FILE`` exists, and
    says so by creating ``$GATED_ENGINE_FILE.held``."""

    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        gate, end = os.environ.get(GATE_ENV), time.monotonic() + 60.0
        if gate and os.path.exists(gate):
            Path(gate + ".held").touch()  # tells the test a forward is waiting
        while gate and os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.005)
        return super().infer(pixel_values)
