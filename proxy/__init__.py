"""The proxy research: a synthetic world, a tiny CLIP pretrained on it, and the evidence gathered there.

No CLIP weights or datasets can be downloaded where deltagate is built, so the method is studied on
a proxy: :mod:`proxy.world` renders a captioned world of shapes, :mod:`proxy.pretrain_tiny` trains a
tiny CLIP on it, :mod:`proxy.demo` builds the bundled default model, and :mod:`proxy.evidence`,
:mod:`proxy.faithfulness` and :mod:`proxy.ablation` run the pre-registered experiments. It may import
:mod:`models` (the product's model and offline code); nothing in :mod:`models` or :mod:`service`
imports it (``tests/unit/test_layering.py``).
"""
