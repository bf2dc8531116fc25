"""Bucket logic of the CUDA-graph forward on the CPU (eager capture); the real capture on a GPU only."""

from __future__ import annotations

import pytest
import torch

from service.cuda_graphs import BucketedForward, bucket_for, cuda_capture, eager_capture

pytestmark = pytest.mark.unit


class RowSums(torch.nn.Module):
    """Two outputs per row that depend on that row only: (sum, 2 * max)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(x.shape[0])
        flat = x.flatten(1)  # (B, C*H*W)
        return flat.sum(1), 2 * flat.max(1).values  # (B,), (B,)


def test_bucket_for_picks_the_smallest_bucket_that_holds_the_batch() -> None:
    buckets = [8, 1, 2, 4, 16]
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert bucket_for(17, buckets) is None
    with pytest.raises(ValueError):
        bucket_for(0, buckets)


def test_replays_pad_to_the_bucket_and_return_only_the_real_rows() -> None:
    model = RowSums()
    fwd = BucketedForward(model, [1, 2, 4], (3, 2, 2), torch.float32, torch.device("cpu"), capture=eager_capture)
    fwd.capture_all()
    assert fwd.captured == [1, 2, 4] and sorted(model.calls) == [1, 2, 4]  # one capture per bucket
    x = torch.arange(3 * 12, dtype=torch.float32).view(3, 3, 2, 2)  # (3, 3, 2, 2)
    sums, maxes = fwd(x)
    assert sums.shape == (3,) and model.calls[-1] == 4  # ran at bucket 4
    torch.testing.assert_close(sums, x.flatten(1).sum(1))  # independent: the rows' own sums
    torch.testing.assert_close(maxes, 2 * x.flatten(1).max(1).values)


def test_outputs_do_not_alias_the_graph_buffers() -> None:
    fwd = BucketedForward(RowSums(), [2], (1, 1, 1), torch.float32, torch.device("cpu"), capture=eager_capture)
    fwd.capture_all()
    first, _ = fwd(torch.ones(2, 1, 1, 1))
    fwd(torch.full((2, 1, 1, 1), 5.0))
    assert first.tolist() == [1.0, 1.0]  # the second replay did not overwrite the first result


def test_padding_rows_are_zeroed_after_a_larger_batch() -> None:
    fwd = BucketedForward(RowSums(), [4], (1, 1, 1), torch.float32, torch.device("cpu"), capture=eager_capture)
    fwd.capture_all()
    fwd(torch.full((4, 1, 1, 1), 7.0))
    fwd(torch.ones(1, 1, 1, 1))
    assert fwd._graphs[4].static_input.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_batch_larger_than_every_bucket_runs_eagerly() -> None:
    model = RowSums()
    fwd = BucketedForward(model, [1, 2], (1, 1, 1), torch.float32, torch.device("cpu"), capture=eager_capture)
    fwd.capture_all()
    sums, _ = fwd(torch.ones(5, 1, 1, 1))
    assert sums.tolist() == [1.0] * 5 and fwd.eager_calls == 1 and model.calls[-1] == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_equals_the_eager_forward() -> None:  # pragma: no cover - GPU only
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.Flatten(), torch.nn.LazyLinear(5)).cuda().half()
    model(torch.zeros(1, 3, 16, 16, device="cuda", dtype=torch.float16))  # materialise the lazy layer

    def forward(x: torch.Tensor) -> tuple[torch.Tensor]:
        return (model(x).float(),)

    fwd = BucketedForward(forward, [1, 4, 8], (3, 16, 16), torch.float16, torch.device("cuda"), capture=cuda_capture,
                          channels_last=True)
    fwd.capture_all()
    x = torch.randn(3, 3, 16, 16, device="cuda", dtype=torch.float16)
    (got,) = fwd(x)
    with torch.no_grad():
        (want,) = forward(x)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
