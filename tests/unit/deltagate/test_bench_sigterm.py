"""The bench commands turn SIGTERM into an unwinding exit while they run, and only then."""

from __future__ import annotations

import os
import signal

import pytest

from deltagate.commands.bench import _sigterm_unwinds

pytestmark = pytest.mark.unit


def test_sigterm_unwinds_inside_the_block_and_the_previous_handler_is_back_after() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, _sigterm_unwinds():
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, in this (main) thread
        for _ in range(1000):
            pass
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is previous
