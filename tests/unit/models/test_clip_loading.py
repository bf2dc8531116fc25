"""CLIP loading: really tries the network (nothing mocked) and fails fast without it; a bundle's vision
tower is the same module whether open_clip's private builder is usable or not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from models.clip_loading import (
    PretrainedUnavailableError,
    UnknownModelError,
    build_vision_tower,
    load_clip,
    model_config,
)

pytestmark = pytest.mark.unit


def test_missing_pretrained_fails_fast_with_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: weights cannot be there
    start = time.monotonic()
    with pytest.raises(PretrainedUnavailableError) as err:
        load_clip("ViT-B-32", "openai", cache_dir=str(tmp_path), network_timeout_s=3.0)
    assert time.monotonic() - start < 10.0
    msg = str(err.value)
    assert "ViT-B-32/openai" in msg and "--pretrained /path/to/open_clip_model.safetensors" in msg
    assert "--cache-dir" in msg and "\n" not in msg and "--pretrained none" not in msg  # never suggests random weights


def test_hf_hub_offline_env_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="HF_HUB_OFFLINE"):
        load_clip("RN50", "openai", cache_dir=str(tmp_path))


def test_unknown_architecture_lists_similar():
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        load_clip("ViT-B-3")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(UnknownModelError, match="openai"):
        load_clip("ViT-B-32", "no-such-tag")


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_clip("ViT-B-32", str(tmp_path / "nope.safetensors"))


def test_local_checkpoint_round_trip(micro_clip, tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in micro_clip.model.state_dict().items()}, str(ckpt))
    again = load_clip("micro-clip", str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.model.encode_image(x), micro_clip.model.encode_image(x))
    assert again.pretrained == str(ckpt)


def test_random_init_and_preprocess_from_config(micro_clip):
    assert micro_clip.pretrained is None
    assert micro_clip.preprocess.image_size == 32
    assert micro_clip.config["embed_dim"] == 32


def test_quick_gelu_follows_the_openai_tag():
    assert model_config("ViT-B-32", "openai").get("quick_gelu") is True
    assert "quick_gelu" not in model_config("ViT-B-32")


@pytest.mark.parametrize(("tag", "found"), [
    ("org/repo/sub/weights.bin", True),   # a file inside the repository: repo "org/repo", file "sub/weights.bin"
    ("org/repo", True),                   # the repository itself: open_clip's default file names
    ("org/other/sub/weights.bin", False),
])
def test_cached_weights_splits_an_hf_hub_tag_into_repo_and_file(tmp_path, tag, found):
    from models.clip_loading import _cached_weights

    repo = tmp_path / "models--org--repo"  # the Hugging Face cache layout: refs/main -> snapshots/<rev>/
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "sub" / "weights.bin").write_bytes(b"w")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"w")
    if tag == "org/repo/sub/weights.bin":
        (snapshot / "open_clip_model.safetensors").unlink()  # only the named file can be what is found
    assert _cached_weights({"hf_hub": tag}, str(tmp_path)) is found


_TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("config", ["tiny-clip", "vit"])
def test_vision_tower_is_the_same_module_when_open_clips_private_builder_is_unusable(config, monkeypatch, caplog):
    import models.clip_loading

    tiny_clip = Path(__file__).parents[3] / "models" / "archs" / "tiny-clip.json"
    cfg = json.loads(tiny_clip.read_text()) if config == "tiny-clip" else _TINY_VIT
    torch.manual_seed(0)
    fast = build_vision_tower(cfg).eval()

    def changed_signature():  # what the check says of a release that changed the private builder
        raise TypeError("_build_vision_tower(embed_dim, vision_cfg, cast_dtype) is not (...)")

    monkeypatch.setattr(models.clip_loading, "_private_vision_tower_builder", changed_signature)
    public = build_vision_tower(cfg).eval()
    assert "building the full model" in caplog.text
    assert {k: v.shape for k, v in public.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    public.load_state_dict(fast.state_dict(), strict=True)
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(2, 3, size, size)  # (B, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(public(x), fast(x))


def test_the_private_builders_signature_is_checked_before_it_is_called(monkeypatch):
    import open_clip.model

    from models.clip_loading import _private_vision_tower_builder

    assert _private_vision_tower_builder() is open_clip.model._build_vision_tower  # open_clip 3.x: usable

    def moved_on(embed_dim, vision_cfg, cast_dtype=None):  # quick_gelu gone: calling it would misbind
        raise AssertionError("never called")

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", moved_on)
    with pytest.raises(TypeError, match="is not"):
        _private_vision_tower_builder()
