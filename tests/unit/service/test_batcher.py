"""The batcher on its own: a fake forward that records what it ran, no HTTP, no timing asserts."""

from __future__ import annotations

import asyncio
import functools
import threading

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import DeadlineError, InferenceFailedError, NotReadyError, OverloadedError
from tests.service_support import until as until_up_to

pytestmark = pytest.mark.unit


class FakeForward:
    """Outputs row i = the first pixel of input i, so routing can be checked; records batches."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []  # the first pixel of every input row, per forward
        self.gate: threading.Event | None = None
        self.fail = False

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(x[:, 0, 0, 0].copy())
        if self.gate is not None:
            self.gate.wait(10.0)
        if self.fail:
            raise RuntimeError("boom")
        return {"delta_energy": x[:, 0, 0, 0].copy(), "probs": np.ones((x.shape[0], 2), np.float32)}


def img(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, np.float32)  # (3, H, W)


until = functools.partial(until_up_to, timeout=5.0)  # the batcher's waits are shorter than the app's


def make(fwd: FakeForward, **kw: object) -> Batcher:
    args: dict[str, object] = {"max_batch_size": 4, "max_wait_s": 5.0, "max_queue_size": 16} | kw
    b = Batcher([fwd], **args)  # type: ignore[arg-type]
    b.start()
    return b


async def test_concurrent_submissions_share_one_forward_and_rows_are_routed_back() -> None:
    fwd = FakeForward()
    b = make(fwd)  # max_wait 5 s: only a full batch makes it run early
    futures = [b.submit([img(float(i))], 10.0)[0] for i in range(4)]
    rows = await asyncio.gather(*futures)
    assert [len(x) for x in fwd.batches] == [4]
    assert [float(r.outputs["delta_energy"]) for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert all(r.batch_size == 4 for r in rows)
    await b.stop()


async def test_batches_are_capped_at_max_batch_size() -> None:
    fwd = FakeForward()
    b = make(fwd, max_wait_s=0.05)
    rows = await asyncio.gather(*b.submit([img(float(i)) for i in range(10)], 10.0))
    assert [len(x) for x in fwd.batches] == [4, 4, 2]
    assert [float(r.outputs["delta_energy"]) for r in rows] == [float(i) for i in range(10)]
    await b.stop()


async def test_a_lone_image_runs_after_max_wait() -> None:
    fwd = FakeForward()
    b = make(fwd, max_wait_s=0.01)
    row = await asyncio.wait_for(b.submit([img(7.0)], 10.0)[0], 5.0)
    assert float(row.outputs["delta_energy"]) == 7.0 and [len(x) for x in fwd.batches] == [1]
    await b.stop()


async def test_full_queue_refuses_at_once_and_frees_after_the_forward() -> None:
    fwd = FakeForward()
    fwd.gate = threading.Event()
    b = make(fwd, max_batch_size=2, max_queue_size=2, max_wait_s=0.0)
    running = b.submit([img(0.0)], 10.0)
    await until(lambda: len(fwd.batches) == 1)  # in the forward, out of the queue
    queued = b.submit([img(1.0), img(2.0)], 10.0)
    assert b.depth == 2
    with pytest.raises(OverloadedError):
        b.submit([img(3.0)], 10.0)
    fwd.gate.set()
    await asyncio.gather(*running, *queued)
    assert b.depth == 0
    await b.stop()


async def test_cancelled_request_is_dropped_before_it_reaches_a_batch() -> None:
    fwd = FakeForward()
    fwd.gate = threading.Event()
    b = make(fwd, max_batch_size=4, max_wait_s=0.0)
    first = b.submit([img(1.0)], 10.0)
    await until(lambda: len(fwd.batches) == 1)
    gone = b.submit([img(2.0)], 10.0)
    kept = b.submit([img(3.0)], 10.0)
    gone[0].cancel()  # the request's client went away
    await until(lambda: b.depth == 1)  # released from the queue count at once
    fwd.gate.set()
    await asyncio.gather(*first, *kept)
    assert [x.tolist() for x in fwd.batches] == [[1.0], [3.0]]
    await b.stop()


async def test_image_past_its_deadline_is_not_forwarded() -> None:
    fwd = FakeForward()
    fwd.gate = threading.Event()
    b = make(fwd, max_batch_size=1, max_wait_s=0.0)
    first = b.submit([img(1.0)], 10.0)
    await until(lambda: len(fwd.batches) == 1)
    late = b.submit([img(2.0)], 0.01)
    await asyncio.sleep(0.05)
    fwd.gate.set()
    await first[0]
    with pytest.raises(DeadlineError):
        await late[0]
    assert [x.tolist() for x in fwd.batches] == [[1.0]]
    await b.stop()


async def test_failing_forward_fails_only_its_batch() -> None:
    fwd = FakeForward()
    fwd.fail = True
    b = make(fwd, max_wait_s=0.0)
    with pytest.raises(InferenceFailedError):
        await b.submit([img(1.0)], 10.0)[0]
    fwd.fail = False
    row = await b.submit([img(2.0)], 10.0)[0]
    assert float(row.outputs["delta_energy"]) == 2.0
    await b.stop()


async def test_padding_to_bucket_keeps_only_real_rows() -> None:
    fwd = FakeForward()
    b = make(fwd, max_batch_size=3, max_wait_s=5.0, pad_buckets=[1, 2, 4])
    rows = await asyncio.gather(*b.submit([img(5.0), img(6.0), img(7.0)], 10.0))
    assert [len(x) for x in fwd.batches] == [4]  # 3 images padded to the bucket of 4
    assert [float(r.outputs["delta_energy"]) for r in rows] == [5.0, 6.0, 7.0]
    assert all(r.batch_size == 3 for r in rows)
    await b.stop()


async def test_stop_finishes_queued_work_then_refuses_new() -> None:
    fwd = FakeForward()
    fwd.gate = threading.Event()
    b = make(fwd, max_batch_size=1, max_wait_s=0.0)
    futures = b.submit([img(1.0), img(2.0)], 10.0)
    stopping = asyncio.ensure_future(b.stop(timeout_s=5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(NotReadyError):
        b.submit([img(3.0)], 10.0)
    fwd.gate.set()
    await stopping
    assert [float(f.result().outputs["delta_energy"]) for f in futures] == [1.0, 2.0]


async def test_metrics_hooks_see_batches_and_depth() -> None:
    fwd, seen, depths = FakeForward(), [], []
    b = make(fwd, max_wait_s=5.0, on_batch=lambda n, s: seen.append(n), on_depth=depths.append)
    await asyncio.gather(*b.submit([img(float(i)) for i in range(4)], 10.0))
    assert seen == [4] and depths[0] == 4 and depths[-1] == 0
    await b.stop()


async def test_an_idle_instance_takes_a_lone_image_at_once() -> None:
    fwd = FakeForward()
    b = make(fwd, max_batch_size=8, max_wait_s=0.0)  # adaptive: no waiting for company when idle
    row = await asyncio.wait_for(b.submit([img(4.0)], 10.0)[0], 2.0)
    assert float(row.outputs["delta_energy"]) == 4.0 and [len(x) for x in fwd.batches] == [1]
    await b.stop()


async def test_images_gather_only_while_every_instance_is_busy() -> None:
    a, c = FakeForward(), FakeForward()
    a.gate, c.gate = threading.Event(), threading.Event()
    b = Batcher([a, c], max_batch_size=4, max_wait_s=0.0, max_queue_size=16)
    b.start()
    first = b.submit([img(1.0)], 10.0)  # instance 0 takes it at once
    await until(lambda: len(a.batches) == 1)
    second = b.submit([img(2.0)], 10.0)  # the other, idle instance takes this one at once
    await until(lambda: len(c.batches) == 1)
    assert b.busy_instances == 2
    waiting = b.submit([img(float(v)) for v in range(10, 16)], 10.0)  # both busy: these gather
    await asyncio.sleep(0.05)
    assert b.depth == 6 and len(a.batches) == len(c.batches) == 1
    a.gate.set()  # instance 0 frees up: takes a full batch of what gathered, then the rest
    await asyncio.gather(*first, *waiting)
    assert [x.tolist() for x in a.batches] == [[1.0], [10.0, 11.0, 12.0, 13.0], [14.0, 15.0]]
    c.gate.set()
    (row,) = await asyncio.gather(*second)
    assert row.instance == 1 and [f.result().instance for f in first] == [0]
    await b.stop()


async def test_a_batch_goes_to_whichever_instance_is_idle() -> None:
    fwds = [FakeForward() for _ in range(3)]
    for f in fwds:
        f.gate = threading.Event()
    b = Batcher(fwds, max_batch_size=2, max_wait_s=0.0, max_queue_size=16)
    b.start()
    futures = []
    for i in range(3):  # one image at a time: each finds an idle instance and goes at once
        futures += b.submit([img(float(i))], 10.0)
        await until(lambda n=i + 1: b.busy_instances == n)  # type: ignore[misc]
    assert all(len(f.batches) == 1 for f in fwds)
    for f in fwds:
        f.gate.set()
    rows = await asyncio.gather(*futures)
    assert sorted(r.instance for r in rows) == [0, 1, 2]
    await b.stop()


async def test_stacking_and_the_forward_run_in_the_instance_thread() -> None:
    names: list[str] = []

    def forward(x: np.ndarray) -> dict[str, np.ndarray]:
        names.append(threading.current_thread().name)
        return {"delta_energy": x[:, 0, 0, 0].copy()}

    b = Batcher([forward, forward], max_batch_size=4, max_wait_s=0.0, max_queue_size=16)
    b.start()
    await asyncio.gather(*b.submit([img(1.0), img(2.0)], 10.0))
    assert names and all(n.startswith("deltagate-infer-") for n in names)
    await b.stop()


async def test_admission_counts_reserved_images_and_refuses_past_the_budget() -> None:
    fwd = FakeForward()
    b = make(fwd, max_queue_size=4)
    with b.admit() as t1, b.admit() as t2:  # two requests whose bodies are being read
        t1.grow(3)  # the first turned out to hold 3 images
        assert b.depth == 4
        with pytest.raises(OverloadedError):
            b.admit()
        with pytest.raises(OverloadedError):
            t2.grow(2)  # it keeps its one provisional image
        assert b.depth == 4
        rows = await asyncio.gather(*b.submit([img(1.0), img(2.0), img(3.0)], 10.0, t1))
        assert len(rows) == 3 and t1.held == 0
    assert b.depth == 0  # leaving the tickets released what they still held
    await b.stop()


async def test_stop_waits_for_a_forward_past_the_drain_time_before_returning() -> None:
    fwd = FakeForward()
    fwd.gate = threading.Event()
    b = make(fwd, max_wait_s=0.0)
    running = b.submit([img(1.0)], 10.0)
    await until(lambda: len(fwd.batches) == 1)
    stopping = asyncio.ensure_future(b.stop(timeout_s=0.01))
    await until(lambda: running[0].done())  # drain time over: the request got its 503 ...
    with pytest.raises(NotReadyError):
        running[0].result()
    await asyncio.sleep(0.05)
    assert not stopping.done()  # ... but stop() still waits: the engine is in use
    fwd.gate.set()
    await asyncio.wait_for(stopping, 5.0)
    assert b.busy_instances == 0
