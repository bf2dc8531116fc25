"""Prompt trainer: seeded determinism, resume, the feature cache against recomputation, the schedule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from models.clip_loading import load_clip, register_architecture
from models.errors import ResumeConflictError
from models.preprocess import preprocess_batch
from models.train.data.folders import TaskPaths, load_task
from models.train.features import FeatureCache
from models.train.trainer import PromptTrainer, TrainConfig, lr_at_epoch
from tests.conftest import ASSETS, MICRO_ARCH
from tests.offline_support import make_task_dirs

pytestmark = pytest.mark.unit

CFG = TrainConfig(method="ebm", n_ctx=4, shots=0, epochs=4, batch_size=5, lr=0.05, warmup_epochs=1, threads=1,
                  device="cpu")


@pytest.fixture(scope="module")
def clip():
    register_architecture(ASSETS / f"{MICRO_ARCH}.json")
    torch.manual_seed(0)
    return load_clip(MICRO_ARCH)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_task(TaskPaths.from_root(make_task_dirs(tmp_path_factory.mktemp("task"))))


def _fit(clip, task, cfg, out, **kw):
    return PromptTrainer(clip, task.class_names, cfg, out).fit(task.train, task.val, progress=False, **kw)


def test_same_seed_same_prompts_other_seed_other_prompts(clip, task, tmp_path):
    a = _fit(clip, task, CFG, tmp_path / "a")
    b = _fit(clip, task, CFG, tmp_path / "b")
    c = _fit(clip, task, replace(CFG, seed=7), tmp_path / "c")
    torch.testing.assert_close(a.class_embeddings, b.class_embeddings, rtol=0, atol=0)
    assert a.history == [{**h, "seconds": a.history[i]["seconds"]} for i, h in enumerate(b.history)]
    assert not torch.allclose(a.class_embeddings, c.class_embeddings)


def test_training_moves_the_context_and_writes_the_run(clip, task, tmp_path):
    res = _fit(clip, task, CFG, tmp_path / "run")
    assert res.learner is not None
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"train_config.json", "run.json", "checkpoint.pt", "prompt.safetensors", "history.json"} <= files
    saved = load_file(str(tmp_path / "run" / "prompt.safetensors"))
    torch.testing.assert_close(saved["class_embeddings"], res.class_embeddings)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    assert all("val_acc" in h and "loss" in h and "train_acc" in h for h in res.history)


@pytest.mark.parametrize("method", ["coop", "ebm"])
def test_resume_equals_uninterrupted_training(clip, task, tmp_path, method):
    cfg = replace(CFG, method=method)
    full = _fit(clip, task, cfg, tmp_path / "full")
    _fit(clip, task, cfg, tmp_path / "cut", stop_after=2)  # "interrupted" after 2 of 4 epochs
    resumed = _fit(clip, task, cfg, tmp_path / "cut", resume=True)
    torch.testing.assert_close(resumed.class_embeddings, full.class_embeddings, rtol=0, atol=0)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_resume_refuses_a_different_config(clip, task, tmp_path):
    _fit(clip, task, CFG, tmp_path / "run", stop_after=1)
    with pytest.raises(ResumeConflictError, match=r"\(lr 0\.\d+ -> 0\.5\).*--no-resume") as info:
        _fit(clip, task, replace(CFG, lr=0.5), tmp_path / "run", resume=True)
    assert "\n" not in str(info.value) and "ebm_weight" not in str(info.value)  # only what differs


def test_cached_features_give_the_logits_of_a_fresh_forward_pass(clip, task, tmp_path):
    from PIL import Image

    from models.train.export import scoring_module_from_clip

    module = scoring_module_from_clip(clip, task.class_names)
    cache = FeatureCache(tmp_path / "cache", clip.model.visual, {"name": MICRO_ARCH}, clip.preprocess)
    first = cache.get(task.test)  # miss: encoded
    again = FeatureCache(tmp_path / "cache", clip.model.visual, {"name": MICRO_ARCH}, clip.preprocess).get(task.test)
    assert cache.misses == 1
    torch.testing.assert_close(first.features, again.features, rtol=0, atol=0)  # read back from disk
    pixels = torch.from_numpy(preprocess_batch([Image.open(p) for p in task.test.paths], clip.preprocess))
    with torch.no_grad():
        direct = module(pixels)[0]  # (N, K): the scoring module's own forward
        cached = module.logits_from_features(again.features)
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-4)


def test_cache_and_recomputation_train_the_same_prompts(clip, task, tmp_path):
    cached = _fit(clip, task, CFG, tmp_path / "cached")
    fresh = _fit(clip, task, replace(CFG, cache_features=False), tmp_path / "fresh")
    torch.testing.assert_close(fresh.class_embeddings, cached.class_embeddings, rtol=1e-4, atol=1e-5)


def test_augmentation_is_seeded(clip, task, tmp_path):
    cfg = replace(CFG, augment=True, epochs=2)
    a = _fit(clip, task, cfg, tmp_path / "a")
    b = _fit(clip, task, cfg, tmp_path / "b")
    torch.testing.assert_close(a.class_embeddings, b.class_embeddings, rtol=0, atol=0)


def test_zero_shot_needs_no_training(clip, task, tmp_path):
    from models.prompt_learner import zero_shot_class_embeddings

    res = _fit(clip, task, replace(CFG, method="zero-shot"), tmp_path / "zs")
    expected = zero_shot_class_embeddings(clip.model, clip.tokenizer, task.class_names, CFG.templates)
    torch.testing.assert_close(res.class_embeddings, expected)
    assert res.learner is None and not (tmp_path / "zs" / "checkpoint.pt").exists()


def test_schedule_is_constant_warmup_then_cosine():
    cfg = replace(CFG, epochs=5, warmup_epochs=1, lr=0.1, warmup_lr=1e-5)
    lrs = [lr_at_epoch(cfg, e) for e in range(5)]
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.1)
    assert lrs[3] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="lora")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ce_on"):
        TrainConfig(ce_on="both")  # type: ignore[arg-type]


def test_checkpoint_matches_only_the_same_configuration(clip, task, tmp_path):
    from models.train.trainer import checkpoint_matches

    assert not checkpoint_matches(tmp_path / "run", CFG)
    _fit(clip, task, CFG, tmp_path / "run", stop_after=1)
    assert checkpoint_matches(tmp_path / "run", CFG)
    assert checkpoint_matches(tmp_path / "run", replace(CFG, threads=2, device="cpu:0"))  # where, not what
    assert not checkpoint_matches(tmp_path / "run", replace(CFG, ebm_weight=0.5))
