"""The options that choose a CLIP (architecture, weights, custom configs, cache), shared by the commands that
build one (train, ablate, export), and what they say about the choice before anything slow starts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from models.clip_loading import LoadedClip

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "SYNTHETIC_SHAPES_MODEL", "ModelOpt", "PretrainedOpt", "ArchOpt",
           "WeightsCacheOpt", "warn", "model_warnings", "load_chosen_clip"]

# A real pretrained CLIP by default: prompt tuning only learns a few context vectors, so everything a model
# knows about images comes from its pretrained weights. Random weights only when asked for ('none').
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "openai"
SYNTHETIC_SHAPES_MODEL = "tiny-clip"  # the demo's CLIP, pretrained on the synthetic world's drawn shapes only
ModelOpt = Annotated[str, typer.Option(
    help="open_clip architecture, e.g. ViT-B-32 or ViT-B-16 (open_clip.list_models()). tiny-clip is the demo's "
         "synthetic-shapes model: it knows only the drawn shapes of `deltagate data synth`.")]
PretrainedOpt = Annotated[str, typer.Option(
    help="The weights: an open_clip pretrained tag of --model (openai, laion2b_s34b_b79k, ...), a local "
         "checkpoint file, or 'none' for random weights (a model that has learned nothing: tests only).")]
ArchOpt = Annotated[Path | None, typer.Option(help="Register an open_clip JSON config first (custom architectures).")]
WeightsCacheOpt = Annotated[Path | None, typer.Option(help="Pretrained-weights cache directory.")]


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def model_warnings(model: str, pretrained: str, data: Path | None = None) -> None:
    """What the chosen weights cannot do, said before the slow part starts (and again in the checks after it).

    Args:
        model: the architecture.
        pretrained: the weights as given (a tag, a file, or none).
        data: the data root the model is for (None: not known), to tell a synthetic world from other images.
    """
    from models.quality import weights_check

    if pretrained.lower() in ("none", "random", ""):
        warn(weights_check(None).message)
    if model == SYNTHETIC_SHAPES_MODEL:
        from proxy.world.splits import is_world

        if data is None or not is_world(data):
            warn(f"{model} is the demo's synthetic-shapes model: it was pretrained on drawn shapes only and knows "
                 f"nothing of other images; for your own images use a real CLIP (--model {DEFAULT_MODEL} "
                 f"--pretrained {DEFAULT_PRETRAINED}, the default)")


def load_chosen_clip(
    model: str, pretrained: str, arch_config: Path | None, cache_dir: Path | None, seed: int
) -> LoadedClip:
    """The CLIP the options name (a custom config registered first), seeded so that random weights repeat."""
    import torch

    from models.clip_loading import load_clip, register_architecture

    if arch_config is not None:
        register_architecture(arch_config)
    torch.manual_seed(seed)  # random-weight models are reproducible too
    return load_clip(model, pretrained, cache_dir=str(cache_dir) if cache_dir else None)
