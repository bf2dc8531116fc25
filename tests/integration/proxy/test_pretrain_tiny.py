"""A few pretraining steps on a tiny world: the loss falls, the checkpoint loads back through open_clip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from models.clip_loading import load_clip
from proxy.pretrain_tiny import PretrainConfig, load_corpus, pretrain_tiny
from proxy.world.splits import load_task_root
from proxy.world.synth import generate_world
from proxy.zero_shot import evaluate_zero_shot
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.integration

STEPS = PretrainConfig(steps=20, batch_size=24, lr=2e-3, warmup_frac=0.2, log_every=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(replace(TINY_WORLD, n_pretrain=120), out)
    return out


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny-clip.safetensors"
    return pretrain_tiny(STEPS, world, out, evaluate=False, progress=False), out


def test_loss_decreases_and_the_report_is_written(world, run):
    report, out = run
    assert report.loss_last < report.loss_first - 0.2
    assert report.corpus_size == 120 and report.unique_captions > 50
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["config"]["steps"] == STEPS.steps and saved["checkpoint_bytes"] == out.stat().st_size
    assert saved["arch_config"]["vision_cfg"]["image_size"] == 64
    caption_file = world / "pretrain" / "captions.jsonl"
    assert saved["captions_sha256"] == hashlib.sha256(caption_file.read_bytes()).hexdigest()


def test_checkpoint_loads_back_through_open_clip(run):
    _, out = run
    model = open_clip.create_model("tiny-clip", pretrained=str(out))  # registered by models.clip_loading
    saved = load_file(str(out))
    state = model.state_dict()
    assert set(saved) == set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v.to(state[k].dtype)), k
    assert out.stat().st_size < 10.5e6  # float16 storage keeps the tiny CLIP under ~10 MB


def test_pretraining_is_deterministic_by_seed(world, tmp_path):
    again = pretrain_tiny(replace(STEPS, steps=2), world, tmp_path / "a.safetensors", evaluate=False, progress=False)
    other = pretrain_tiny(replace(STEPS, steps=2), world, tmp_path / "b.safetensors", evaluate=False, progress=False)
    assert again.loss_curve == other.loss_curve
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_shot_evaluation_reports_every_set(world, run):
    _, out = run
    clip = load_clip("tiny-clip", str(out))
    report = evaluate_zero_shot(clip, load_task_root(world))
    assert report.classes == ["circle", "square", "star", "triangle"]
    assert 0.0 <= report.id_accuracy <= 1.0 and report.linear_probe_accuracy is not None
    assert set(report.covariate_accuracy) == {"pixel", "sketch"}
    assert set(report.auroc["delta_energy"]) == {"near", "near_hard", "far_noise", "far_textures"}
    assert report.counts["id/test"] == 4 * TINY_WORLD.n_test_per_class


def test_the_report_of_a_world_is_on_its_val_splits_only(world, tmp_path):
    report = pretrain_tiny(replace(STEPS, steps=1), world, tmp_path / "v.safetensors", progress=False)
    assert report.zero_shot_split == "val"
    assert report.zero_shot is not None
    assert report.zero_shot["counts"]["id/test"] == 4 * TINY_WORLD.n_val_per_class  # ID val images
    assert report.zero_shot["counts"]["ood/far_noise"] == TINY_WORLD.n_far_val_per_set


def test_the_decoded_corpus_is_cached_and_equal(world, tmp_path):
    clip = load_clip("tiny-clip")
    cache = tmp_path / "cache"
    first = load_corpus(world / "pretrain", clip, cache)
    second = load_corpus(world / "pretrain", clip, cache)
    assert not first.cached and second.cached and len(list(cache.iterdir())) == 1
    assert torch.equal(first.pixels, second.pixels) and torch.equal(first.tokens, second.tokens)
    assert torch.equal(load_corpus(world / "pretrain", clip).pixels, first.pixels)  # uncached path agrees
    # A copy of the corpus with its timestamps (cp -a) and its cache hits the same entry.
    copy = shutil.copytree(world / "pretrain", tmp_path / "copy" / "pretrain", copy_function=shutil.copy2)
    shutil.copytree(cache, copy / "cache", dirs_exist_ok=True)
    assert load_corpus(copy, clip, copy / "cache").cached
    # A changed image is a new key: the stale entry is not reused.
    img = sorted((world / "pretrain" / "images").glob("*.png"))[0]
    img.write_bytes(img.read_bytes())
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert not load_corpus(world / "pretrain", clip, cache).cached
