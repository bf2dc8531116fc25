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

from models.prompts import DEFAULT_TEMPLATES, label_text, learned_prefix, learned_prompt, template_prompts

__all__ = ["TextTower", "PromptLearner", "TextEmbedder", "zero_shot_class_embeddings", "DEFAULT_TEMPLATES"]


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
        self.classnames = [label_text(c) for c in classnames]
        prefix_text = learned_prefix(n_ctx, ctx_init)
        if ctx_init:
            ctx_init = prefix_text
            init_tokens = tokenizer([ctx_init])  # (1, L)
            n_ctx = int((init_tokens[0] > 0).sum().item()) - 2  # minus SOS and EOS
            with torch.no_grad():
                init_emb = self.text.token_embedding(init_tokens)  # (1, L, W)
            ctx = init_emb[0, 1 : 1 + n_ctx].clone()  # (n_ctx, W)
        else:
            ctx = torch.randn(n_ctx, self.text.width) * init_std  # (n_ctx, W)
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.prefix_text = prefix_text  # the text graph of the bundle builds new prompts with it
        self.ctx = nn.Parameter(ctx)  # (n_ctx, W)

        prompts = [learned_prompt(prefix_text, name) for name in self.classnames]
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
        tokens = tokenizer(template_prompts(templates, name))  # (T, L)
        feats = F.normalize(clip_model.encode_text(tokens), dim=-1)  # (T, D)
        out.append(F.normalize(feats.mean(dim=0), dim=-1))  # (D,)
    return torch.stack(out).float()  # (K, D)


class TextEmbedder(nn.Module):
    """Token ids -> class embeddings, with or without the learned context: the bundle's ``text.onnx``.

    ``forward(input_ids (N, T, L), use_context (N,))``: each of the N labels has T prompts (the
    zero-shot templates, or T = 1 learned prompt); a row with ``use_context = 1`` has its placeholder
    tokens (positions 1..n_ctx) replaced by the learned context vectors, as :meth:`PromptLearner.forward`
    concatenates them. The result is the normalised mean of the T normalised prompt embeddings
    (:func:`zero_shot_class_embeddings`; for T = 1 just the normalised embedding), so a label set's
    embeddings match the trained classes' baked ones.

    Args:
        clip_model: the open_clip model (its text tower, frozen).
        ctx: (n_ctx, W) learned context vectors, or None (zero-shot prompts only).
    """

    ctx_full: torch.Tensor  # (L, W): the context at positions 1..n_ctx, zeros elsewhere
    ctx_mask: torch.Tensor  # (L,): 1 at positions 1..n_ctx

    def __init__(self, clip_model: nn.Module, ctx: torch.Tensor | None = None) -> None:
        super().__init__()
        self.text = TextTower(clip_model)
        length = int(self.text.positional_embedding.shape[0])
        self.n_ctx = 0 if ctx is None else int(ctx.shape[0])
        if self.n_ctx + 3 > length:
            raise ValueError(f"{self.n_ctx} context vectors leave no room for a label in {length} tokens")
        ctx_full = torch.zeros(length, self.text.width)  # (L, W)
        mask = torch.zeros(length)  # (L,)
        if ctx is not None:
            ctx_full[1 : 1 + self.n_ctx] = ctx.detach().float()
            mask[1 : 1 + self.n_ctx] = 1.0
        self.register_buffer("ctx_full", ctx_full)
        self.register_buffer("ctx_mask", mask)

    @property
    def context_length(self) -> int:
        return int(self.ctx_mask.shape[0])

    def forward(self, input_ids: torch.Tensor, use_context: torch.Tensor) -> torch.Tensor:
        """Args: input_ids (N, T, L) int64, use_context (N,) float (0 or 1). Returns: (N, D) normalised."""
        n, t, length = input_ids.shape
        ids = input_ids.reshape(n * t, length)  # (NT, L)
        emb = self.text.token_embedding(ids)  # (NT, L, W)
        row = use_context.float().repeat_interleave(t)  # (NT,)
        replace = (row[:, None] * self.ctx_mask[None, :]) > 0.5  # (NT, L)
        emb = torch.where(replace[:, :, None], self.ctx_full[None].to(emb.dtype), emb)  # (NT, L, W)
        feats = F.normalize(self.text(emb, ids), dim=-1).reshape(n, t, -1)  # (N, T, D)
        return F.normalize(feats.mean(dim=1), dim=-1)  # (N, D)
