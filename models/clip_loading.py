"""Build any open_clip CLIP: pretrained tag, local checkpoint, or random weights.

open_clip keeps architecture (JSON configs), weights (pretrained tags) and construction apart;
so does this module. Custom architectures (e.g. the tiny CLIP of the synthetic world) are JSON
files in open_clip's config format under ``models/archs/`` (registered automatically) or
anywhere else via :func:`register_architecture`.

open_clip, offline, retries a hub download for ~15 s and then silently falls back to random
weights. Here a missing pretrained download fails fast with :class:`PretrainedUnavailableError`,
one line that names the alternatives (a local checkpoint path or a populated cache directory).
Random weights are only ever built when asked for (``pretrained=None`` / ``"none"``).
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch

from models.errors import PretrainedUnavailableError, UnknownModelError
from models.preprocess import PreprocessConfig

__all__ = [
    "ARCHS_DIR",
    "LoadedClip",
    "PretrainedUnavailableError",
    "UnknownModelError",
    "register_architecture",
    "model_config",
    "load_clip",
    "build_vision_tower",
]

logger = logging.getLogger(__name__)

ARCHS_DIR = Path(__file__).parent / "archs"
_HF_HOST = "huggingface.co"


@dataclass
class LoadedClip:
    """A constructed CLIP and everything needed to use it consistently."""

    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode
    name: str  # architecture name (open_clip config name)
    pretrained: str | None  # tag, checkpoint path, or None (random init)
    config: dict[str, Any]  # effective open_clip model config (quick_gelu resolved)
    preprocess: PreprocessConfig  # eval preprocessing of this model
    tokenizer: Any  # open_clip tokenizer: list[str] -> (N, context_length) LongTensor


def register_architecture(path: str | os.PathLike[str]) -> list[str]:
    """Register open_clip model configs (a JSON file or a folder of them).

    Args:
        path: a ``<name>.json`` file in open_clip's config format, or a folder of such files.

    Returns:
        The registered architecture names (file stems).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"architecture config not found: {p}")
    open_clip.add_model_config(p)
    return [p.stem] if p.is_file() else sorted(f.stem for f in p.glob("*.json"))


if ARCHS_DIR.is_dir():
    register_architecture(ARCHS_DIR)


def model_config(name: str, pretrained: str | None = None) -> dict[str, Any]:
    """The effective open_clip config of an architecture (with the tag's quick_gelu).

    Raises:
        UnknownModelError: unknown name; the message lists similar known names.
    """
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = open_clip.list_models()
        close = [m for m in known if name.lower().split("-")[0] in m.lower()][:12]
        raise UnknownModelError(
            f"unknown architecture {name!r}. Similar: {', '.join(close) or '-'}; "
            f"{len(known)} known in all (open_clip.list_models()); register a JSON config with "
            "register_architecture() or put it in models/archs/."
        )
    cfg = copy.deepcopy(cfg)
    if pretrained and _is_tag(name, pretrained):
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        if pcfg.get("quick_gelu"):
            cfg["quick_gelu"] = True
    return cfg


def _is_tag(name: str, pretrained: str) -> bool:
    return pretrained.lower() in {t.lower() for t in open_clip.list_pretrained_tags_by_model(name)}


def _cached_weights(pcfg: dict[str, Any], cache_dir: str | None) -> bool:
    """Whether the tag's weights already sit in the local cache (hub or URL download)."""
    hub = pcfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hub.strip("/").split("/")  # "org/repo" or "org/repo/path/to/file"
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            if isinstance(hit, str):
                return True
    url = pcfg.get("url") or ""
    if url:
        root = Path(cache_dir or Path.home() / ".cache" / "clip")
        if (root / Path(urlparse(url).path).name).is_file():
            return True
    return False


def _reachable(host: str, timeout: float) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _check_pretrained_available(name: str, tag: str, cache_dir: str | None, timeout: float) -> None:
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if _cached_weights(pcfg, cache_dir):
        return
    host = _HF_HOST if pcfg.get("hf_hub") else urlparse(pcfg.get("url", "")).hostname or _HF_HOST
    if _reachable(host, timeout):
        return
    where = f"Hugging Face repo {pcfg['hf_hub'].strip('/')}" if pcfg.get("hf_hub") else pcfg.get("url", host)
    raise PretrainedUnavailableError(
        f"the pretrained weights {name}/{tag} cannot be had here: not in the cache "
        f"({cache_dir or '~/.cache/huggingface, ~/.cache/clip'}) and {host} cannot be reached (no network, or "
        f"HF_HUB_OFFLINE is set); copy the "
        f"checkpoint ({where}) to this machine and pass --model {name} --pretrained /path/to/open_clip_model."
        "safetensors, or --cache-dir DIR that holds it"
    )


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    network_timeout_s: float = 3.0,
) -> LoadedClip:
    """Construct an open_clip model.

    Args:
        name: architecture, e.g. ``"ViT-B-16"`` or a registered custom name such as ``"tiny-clip"``.
        pretrained: ``None`` / ``"none"`` for random weights, a pretrained tag (``"openai"``), or
            the path of a local checkpoint (state dict, ``.pt``/``.bin``/``.safetensors``).
        cache_dir: where open_clip looks for / stores downloaded weights.
        device: where to put the model.
        network_timeout_s: how long to wait when probing the hub before failing.

    Returns:
        The model in eval mode with its config, preprocessing and tokenizer.

    Raises:
        UnknownModelError: unknown architecture or tag.
        PretrainedUnavailableError: tag not cached and no network.
        FileNotFoundError: a checkpoint path that does not exist.
    """
    if pretrained is not None and pretrained.lower() in ("", "none", "random"):
        pretrained = None
    cfg = model_config(name, pretrained)
    if pretrained is not None:
        if Path(pretrained).suffix or os.sep in pretrained:
            if not Path(pretrained).is_file():
                raise FileNotFoundError(f"checkpoint not found: {pretrained}")
        elif not _is_tag(name, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UnknownModelError(
                f"unknown pretrained tag {pretrained!r} for {name}; known tags: {', '.join(tags) or 'none'}; "
                "or pass a local checkpoint path"
            )
        else:
            _check_pretrained_available(name, pretrained, cache_dir, network_timeout_s)
    logger.info("building %s (weights: %s)", name, pretrained or "random init")
    model = open_clip.create_model(
        name,
        pretrained=pretrained,
        cache_dir=cache_dir,
        device=device,
        require_pretrained=pretrained is not None,
        force_quick_gelu=bool(cfg.get("quick_gelu", False)),
    )
    model.eval()
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    preprocess = PreprocessConfig(
        image_size=int(_as_int(pp.get("size", cfg["vision_cfg"].get("image_size", 224)))),
        mean=tuple(pp.get("mean", PreprocessConfig().mean)),
        std=tuple(pp.get("std", PreprocessConfig().std)),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode=pp.get("resize_mode", "shortest") if pp.get("resize_mode") != "squash" else "squash",
    )
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedClip(model, name, pretrained, cfg, preprocess, tokenizer)


def _as_int(size: Any) -> int:
    return int(size[0]) if isinstance(size, list | tuple) else int(size)


def build_vision_tower(open_clip_config: dict[str, Any]) -> torch.nn.Module:
    """Construct the (randomly initialised) vision tower of an open_clip model config (a bundle's
    ``architecture.open_clip_config``; its weights come from the bundle).

    open_clip has no public "vision tower only" constructor. The fast path is
    ``open_clip.model._build_vision_tower``, the private function its own ``CLIP`` and
    ``CustomTextCLIP`` call, which skips building (and discarding) the text tower; ``open_clip_torch``
    is pinned below 4 for it. Should a release move or change it, the public path builds the whole
    model class open_clip's factory would pick and keeps its ``visual``: the same module, only slower
    to construct (tested in ``tests/unit/models/test_clip_loading.py``).
    """
    cfg = copy.deepcopy(open_clip_config)
    vision_cfg = dict(cfg["vision_cfg"])
    vision_cfg["timm_model_pretrained"] = False  # weights come from the bundle, never a download
    quick_gelu = bool(cfg.get("quick_gelu", False))
    try:
        builder = _private_vision_tower_builder()
    except (ImportError, TypeError) as exc:  # moved, renamed, or a changed signature
        logger.warning("open_clip's _build_vision_tower is unusable (%s): building the full model for its "
                       "vision tower", exc)
        return _vision_tower_of_full_model(cfg, vision_cfg, quick_gelu)
    tower: torch.nn.Module = builder(cfg["embed_dim"], vision_cfg, quick_gelu, None)
    return tower


_PRIVATE_BUILDER_PARAMS = ["embed_dim", "vision_cfg", "quick_gelu", "cast_dtype"]  # open_clip 3.x


def _private_vision_tower_builder() -> Any:
    """open_clip's private ``_build_vision_tower``, checked against the signature it is called with.

    Raises:
        ImportError: open_clip no longer has it.
        TypeError: its parameters changed (checked here, so that a real configuration error raised
            while building is never mistaken for an API change).
    """
    from open_clip.model import _build_vision_tower

    params = list(inspect.signature(_build_vision_tower).parameters)
    if params[:len(_PRIVATE_BUILDER_PARAMS)] != _PRIVATE_BUILDER_PARAMS:
        raise TypeError(f"_build_vision_tower{inspect.signature(_build_vision_tower)} is not "
                        f"({', '.join(_PRIVATE_BUILDER_PARAMS)}, ...)")
    return _build_vision_tower


def _vision_tower_of_full_model(cfg: dict[str, Any], vision_cfg: dict[str, Any], quick_gelu: bool) -> torch.nn.Module:
    """The public path of :func:`build_vision_tower`: the CLIP class open_clip's factory would pick.

    It builds the text tower too (then drops it); for a Hugging Face text tower (``hf_model_name`` in
    ``text_cfg``) that needs ``transformers`` and the model's config, which the fast path never does.
    """
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}  # the model config, as create_model passes it
    model_class = open_clip.CustomTextCLIP if cfg.get("custom_text", False) else open_clip.CLIP
    model = model_class(**{**kwargs, "vision_cfg": vision_cfg, "quick_gelu": quick_gelu})
    visual: torch.nn.Module = model.visual
    return visual
