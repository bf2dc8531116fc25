from __future__ import annotations

import pytest
import torch

from models.prompt_learner import PromptLearner, zero_shot_class_embeddings
from models.scoring_module import ScoringModule
from tests.conftest import MICRO_CLASSES

pytestmark = pytest.mark.unit


def test_phrase_init_reproduces_zero_shot_prompts(micro_clip):
    # "a photo of a {c}." through the learner must equal the hand-written zero-shot prompt.
    learner = PromptLearner(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, ctx_init="a photo of a")
    zs = zero_shot_class_embeddings(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, ("a photo of a {}.",))
    assert learner.n_ctx == 4
    torch.testing.assert_close(learner.bake(), zs, atol=1e-5, rtol=1e-5)


def test_only_context_is_trainable_and_gets_gradients(micro_clip):
    learner = PromptLearner(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, n_ctx=6)
    trainable = [n for n, p in learner.named_parameters() if p.requires_grad]
    assert trainable == ["ctx"]
    feats = learner()  # (K, D)
    assert feats.shape == (4, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))
    feats[:, 0].sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in micro_clip.model.named_parameters())


def test_bake_gives_fixed_embeddings_for_the_scoring_module(micro_clip):
    learner = PromptLearner(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, n_ctx=4)
    baked = learner.bake()
    assert not baked.requires_grad
    module = ScoringModule(micro_clip.model.visual, baked, 50.0)
    logits, probs, de, en = module(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4) and probs.shape == (2, 4) and de.shape == (2,) and en.shape == (2,)


def test_too_long_prompt_is_refused(micro_clip):
    with pytest.raises(ValueError, match="context"):
        PromptLearner(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, n_ctx=30)
