"""How a class name becomes the text the text tower reads: the one definition, without torch.

Two prompt modes exist for a bundle with a text side (``docs/label-sets.md``):

* ``learned``: the bundle's learned CoOp/EBM context. The prompt is ``"<placeholders> <name>."``; the
  text graph replaces the placeholder tokens' embeddings with the learned context vectors, exactly
  as :class:`models.prompt_learner.PromptLearner` does in training.
* ``zero-shot``: hand-written templates (``"a photo of a {}."``); the embedding is the normalised
  mean of the templates' normalised embeddings (zero-shot CLIP).

The training code (:mod:`models.prompt_learner`) and the serving code (:mod:`models.text_runtime`)
both build their prompts here, so a label typed at request time reads exactly as a trained class did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = ["DEFAULT_TEMPLATES", "PromptMode", "PROMPT_MODES", "label_text", "placeholder_prefix", "learned_prefix",
           "learned_prompt", "template_prompts"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
PromptMode = Literal["learned", "zero-shot"]
PROMPT_MODES: tuple[str, ...] = ("learned", "zero-shot")


def label_text(name: str) -> str:
    """A class name as prompts use it: an underscore reads as a space (folder names such as ``red_circle``)."""
    return name.replace("_", " ")


def placeholder_prefix(n_ctx: int) -> str:
    """The text in front of the name in a learned prompt with randomly initialised context: ``n_ctx`` X's."""
    return " ".join(["X"] * n_ctx)


def learned_prefix(n_ctx: int, ctx_init: str | None = None) -> str:
    """The text in front of the name in a learned prompt: the initialisation phrase, or ``n_ctx`` placeholders."""
    return label_text(ctx_init).strip() if ctx_init else placeholder_prefix(n_ctx)


def learned_prompt(prefix: str, name: str) -> str:
    """The learned-context prompt of a name (CoOp, class token at the end)."""
    return f"{prefix} {label_text(name)}."


def template_prompts(templates: Sequence[str], name: str) -> list[str]:
    """The zero-shot prompts of a name, one per template."""
    return [t.format(label_text(name)) for t in templates]
