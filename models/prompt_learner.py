"""CoOp prompt learner and the classifier it drives.

CoOp (Zhou et al., 2022): the class prompt ``[SOS] ctx_1 .. ctx_n <class name> . [EOS]`` has
``n_ctx`` learnable context vectors shared by all classes; both encoders stay frozen. The same
learner serves CoOp (cross-entropy) and EBM (cross-entropy minus λ·ΔE_lb, METHOD.md): only the
loss differs. :meth:`PromptLearner.bake` turns the learned prompts into a fixed (K, D) matrix of
class embeddings, so serving needs no text tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

__all__ = ["TextTower", "PromptLearner", "zero_shot_class_embeddings", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


class TextTower(nn.Module):
    """The frozen text side of an open_clip model, taking token embeddings instead of ids.

    Works for both ``CLIP`` (text modules on the model) and ``CustomTextCLIP`` (on ``model.text``).
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        src: Any = getattr(clip_model, "text", clip_model)
        if not hasattr(src, "token_embedding") or not hasattr(src, "transformer"):
            raise TypeError("prompt tuning needs an open_clip text transformer (HF text towers are not supported)")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
        self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Encode prompts.

        Args:
            embeddings: (N, L, W) token embeddings (context vectors already inserted).
            tokens: (N, L) token ids, used only to find the pooling (EOS) position.

        Returns:
            (N, D) unnormalised text features.
        """
        x = embeddings + self.positional_embedding.to(embeddings.dtype)  # (N, L, W)
        x = self.transformer(x, attn_mask=self.attn_mask)  # (N, L, W)
        x = self.ln_final(x)  # (N, L, W)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)  # (N, W)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)  # (N, D)
        if self.text_projection is not None:
            return x @ self.text_projection  # (N, D)
        return x


class PromptLearner(nn.Module):
    """Learnable shared context vectors in front of each class name (CoOp, class token at the end).

    Args:
        clip_model: an open_clip model (its text tower is frozen and reused).
        tokenizer: the model's open_clip tokenizer.
        classnames: the K class names.
        n_ctx: number of context vectors (ignored when ``ctx_init`` is given: its token count is used).
        ctx_init: optional phrase to initialise the context from, e.g. ``"a photo of a"``.
        init_std: std of the random initialisation when there is no phrase (CoOp: 0.02).
    """

    tokens: torch.Tensor  # (K, L) buffers
    prefix: torch.Tensor  # (K, 1, W)
    suffix: torch.Tensor  # (K, L - 1 - n_ctx, W)

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.text = TextTower(clip_model)
        self.classnames = [c.replace("_", " ") for c in classnames]
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ").strip()
            init_tokens = tokenizer([ctx_init])  # (1, L)
            n_ctx = int((init_tokens[0] > 0).sum().item()) - 2  # minus SOS and EOS
            with torch.no_grad():
                init_emb = self.text.token_embedding(init_tokens)  # (1, L, W)
            ctx = init_emb[0, 1 : 1 + n_ctx].clone()  # (n_ctx, W)
            prefix_text = ctx_init
        else:
            ctx = torch.randn(n_ctx, self.text.width) * init_std  # (n_ctx, W)
            prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.ctx = nn.Parameter(ctx)  # (n_ctx, W)

        prompts = [f"{prefix_text} {name}." for name in self.classnames]
        tokens = tokenizer(prompts)  # (K, L)
        context_length = tokens.shape[1]
        longest = int((tokens > 0).sum(dim=1).max().item())
        if longest >= context_length and bool((tokens[:, -1] > 0).any()):
            raise ValueError(f"prompts do not fit the text context of {context_length} tokens; lower n_ctx")
        with torch.no_grad():
            emb = self.text.token_embedding(tokens)  # (K, L, W)
        self.register_buffer("tokens", tokens, persistent=False)  # (K, L)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # (K, 1, W): SOS
        self.register_buffer("suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # (K, L-1-n, W)

    @property
    def num_classes(self) -> int:
        return int(self.tokens.shape[0])

    def forward(self) -> torch.Tensor:
        """Text features of the K class prompts.

        Returns:
            (K, D) L2-normalised class embeddings (differentiable w.r.t. ``ctx``).
        """
        k = self.num_classes
        ctx = self.ctx.unsqueeze(0).expand(k, -1, -1)  # (K, n_ctx, W)
        embeddings = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)  # (K, L, W)
        return F.normalize(self.text(embeddings, self.tokens), dim=-1)  # (K, D)

    @torch.no_grad()
    def bake(self) -> torch.Tensor:
        """Freeze the learned prompts into class embeddings for serving.

        Returns:
            (K, D) L2-normalised class embeddings, detached, float32.
        """
        return self.forward().detach().float()


@torch.no_grad()
def zero_shot_class_embeddings(
    clip_model: Any,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """Hand-written-prompt class embeddings (zero-shot CLIP), averaged over templates.

    Args:
        clip_model: an open_clip model.
        tokenizer: its tokenizer.
        classnames: K class names.
        templates: format strings with one ``{}`` for the class name.

    Returns:
        (K, D) L2-normalised class embeddings.
    """
    out = []
    for name in classnames:
        tokens = tokenizer([t.format(name.replace("_", " ")) for t in templates])  # (T, L)
        feats = F.normalize(clip_model.encode_text(tokens), dim=-1)  # (T, D)
        out.append(F.normalize(feats.mean(dim=0), dim=-1))  # (D,)
    return torch.stack(out).float()  # (K, D)
