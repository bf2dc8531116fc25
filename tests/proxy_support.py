"""Helpers of the proxy research tests: a tiny synthetic world."""

from __future__ import annotations

from proxy.world.synth import WorldConfig

# A world small enough to render in about a second (every split present, every far set, 2 held-out styles).
TINY_WORLD = WorldConfig(
    seed=3,
    categories=("circle", "square", "triangle", "star", "heart", "ring", "spiral", "lightning bolt"),
    id_classes=("circle", "square", "triangle", "star"),
    covariate_styles=("sketch", "pixel"),
    n_pretrain=48,
    n_train_per_class=3,
    n_val_per_class=2,
    n_test_per_class=2,
    n_far_val_per_set=1,
    n_far_per_set=2,
    n_covariate_val_per_class=1,
    n_covariate_per_class=1,
)
