"""Rendering of the synthetic world: objects in styles on backgrounds, textures, and their captions.

Everything is drawn with PIL and NumPy from an explicit ``numpy.random.Generator``, so an image is a
pure function of its generator's seed (see :mod:`.synth` for how seeds are derived). Images are drawn
at ``size * supersample`` pixels and box-filtered down, which anti-aliases edges.

Styles (registry :data:`STYLES`): every style starts from the category's silhouette mask.

- ``flat``: filled with the object's colour and a pattern (solid, striped, dotted, checkered).
- ``outline``: only the silhouette's border, in the object's colour (hollow).
- ``shaded``: a lit gradient fill with a drop shadow and a darker rim.
- ``sketch``: grey pencil strokes (several jittered passes) with hatching on paper (the colour is lost).
- ``pixel``: the silhouette on a grid where it spans 8-14 blocks, blown up with hard pixel edges, sometimes
  with a dark rim.
- ``neon``: a glowing coloured tube along the border on a dark background.

Textures (registry :data:`TEXTURES`): images with no object, each with its own caption, used in the
pretraining corpus (so CLIP has seen non-object images) and as far-OOD test sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFilter

from proxy.world.shapes import UPRIGHT, category_prims, draw_mask

__all__ = [
    "COLOURS",
    "BG_COLOURS",
    "PATTERNS",
    "STYLES",
    "TEXTURES",
    "ObjectSpec",
    "sample_object",
    "render_objects",
    "object_caption",
    "STYLE_LEADS",
    "render_texture",
]

RGB = tuple[int, int, int]
Array = np.ndarray

# Object colours with their caption words.
COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 165, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "teal": (30, 170, 170),
}
# Background colours with their caption words.
BG_COLOURS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "light gray": (205, 205, 205),
    "beige": (240, 228, 200),
    "light blue": (190, 215, 245),
    "light green": (200, 235, 195),
    "light yellow": (250, 245, 190),
    "pale pink": (248, 205, 220),
    "dark gray": (70, 70, 70),
    "black": (15, 15, 15),
    "navy": (25, 35, 90),
    "dark green": (25, 70, 40),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: dict[str, tuple[float, float]] = {  # object radius as a fraction of the image side
    "small": (0.15, 0.21),
    "medium": (0.22, 0.29),
    "large": (0.30, 0.40),
}
POSITIONS: dict[tuple[int, int], str] = {  # (column, row) offset -> caption words
    (0, 0): "in the center",
    (-1, 0): "on the left",
    (1, 0): "on the right",
    (0, -1): "at the top",
    (0, 1): "at the bottom",
    (-1, -1): "in the top left corner",
    (1, -1): "in the top right corner",
    (-1, 1): "in the bottom left corner",
    (1, 1): "in the bottom right corner",
}


@dataclass(frozen=True)
class ObjectSpec:
    """The sampled attributes of one object in an image."""

    category: str  # category name (caption words)
    colour: str  # key of COLOURS
    pattern: str  # one of PATTERNS (drawn by the flat style only)
    size: str  # key of SIZES
    position: str  # caption words of the placement, from POSITIONS
    centre: tuple[float, float]  # (x, y) as fractions of the image side, y down
    radius: float  # fraction of the image side
    angle: float  # counter-clockwise rotation in degrees


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_object(
    rng: np.random.Generator, category: str, slot: tuple[int, int] | None = None, max_size: str = "large"
) -> ObjectSpec:
    """Sample colour, pattern, size, position and rotation of one object.

    Args:
        rng: the image's generator.
        category: what the object is.
        slot: force a placement (column, row) in {-1, 0, 1}^2 (used for two-object images).
        max_size: the largest size allowed.

    Returns:
        The object's attributes.
    """
    sizes = list(SIZES)[: list(SIZES).index(max_size) + 1]
    size = _pick(rng, sizes)
    radius = float(rng.uniform(*SIZES[size]))
    if slot is None:
        col, row = (0, 0) if size == "large" or rng.random() < 0.3 else (int(v) for v in rng.integers(-1, 2, size=2))
        slot = (col, row)
    reach = max(0.0, 0.5 - radius - 0.02)  # farthest the centre may move and keep the object inside
    offsets = [s * reach * float(rng.uniform(0.75, 1.0)) if s else float(rng.uniform(-0.04, 0.04)) for s in slot]
    if category == "arrow" and rng.random() < 0.6:
        angle = 90.0 * int(rng.integers(4)) + float(rng.uniform(-12, 12))
    elif category in UPRIGHT:
        angle = float(rng.uniform(-25, 25))
    else:
        angle = float(rng.uniform(0, 360))
    return ObjectSpec(
        category=category,
        colour=_pick(rng, list(COLOURS)),
        pattern=_pick(rng, PATTERNS) if rng.random() < 0.5 else "solid",
        size=size,
        position=POSITIONS[(int(slot[0]), int(slot[1]))],
        centre=(0.5 + offsets[0], 0.5 + offsets[1]),
        radius=radius,
        angle=angle,
    )


# ---------------------------------------------------------------------------------------------
# Colour and pixel helpers (float arrays in 0..255, shape (S, S, 3); masks (S, S) in 0..1)
# ---------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb: RGB, sigma: float = 10.0) -> Array:
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.normal(0.0, sigma, 3), 0, 255)  # (3,)


def _lum(rgb: Array | RGB) -> float:
    r, g, b = (float(v) for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _second_colour(rgb: Array) -> Array:
    """A partner colour for patterns and gradients: darker for light colours, lighter for dark ones."""
    return rgb * 0.45 if _lum(rgb) > 150 else rgb + (255.0 - rgb) * 0.6  # (3,)


def _contrasting_bg(rng: np.random.Generator, object_colours: Sequence[str]) -> str:
    """A background colour at least somewhat distant from every object colour."""
    names = list(BG_COLOURS)
    rng.shuffle(names)
    for name in names:
        bg = np.asarray(BG_COLOURS[name], dtype=np.float32)
        if all(np.linalg.norm(bg - np.asarray(COLOURS[c], dtype=np.float32)) > 110 for c in object_colours):
            return name
    return names[0]


def _solid(rgb: Array, s: int) -> Array:
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32), (s, s, 3)).copy()  # (S, S, 3)


def _coords(rng: np.random.Generator, s: int, angle: float | None = None) -> tuple[Array, Array]:
    """Rotated pixel coordinates (u along the angle, v across it)."""
    a = float(rng.uniform(0, math.pi)) if angle is None else angle
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)  # (S, S) each
    return xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)


def _mix(canvas: Array, paint: Array, alpha: Array) -> Array:
    """Paint over the canvas where alpha (S, S) is 1."""
    a = alpha[..., None]  # (S, S, 1)
    return canvas * (1.0 - a) + paint * a  # (S, S, 3)


def _to_mask(img: Image.Image) -> Array:
    return np.asarray(img, dtype=np.float32) / 255.0  # (S, S)


def _edge(mask: Image.Image, width: int) -> Image.Image:
    """The silhouette's inner border of ``width`` pixels (mask minus its erosion)."""
    m = np.asarray(mask, dtype=np.uint8)  # (S, S)
    k = 2 * max(1, width) + 1
    padded = np.pad(m, k // 2)  # (S + k - 1, S + k - 1); outside the image counts as background
    eroded = sliding_window_view(padded, k, axis=0).min(axis=-1)  # (S, S + k - 1): min over a column window
    eroded = sliding_window_view(eroded, k, axis=1).min(axis=-1)  # (S, S): separable square erosion
    return Image.fromarray(m - np.minimum(m, eroded))


def _finish(canvas: Array, size: int) -> Image.Image:
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BOX)


# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, s: int, object_colours: Sequence[str]) -> tuple[Array, str]:
    """A varied background (plain, gradient, speckled or grid paper) and its caption phrase."""
    name = _contrasting_bg(rng, object_colours)
    base = _jitter(rng, BG_COLOURS[name], 6.0)
    kind = _pick(rng, ("plain", "plain", "gradient", "speckled", "grid"))
    if kind == "gradient":
        u, _ = _coords(rng, s)
        t = ((u - u.min()) / max(1e-6, float(u.max() - u.min())))[..., None]  # (S, S, 1)
        other = base * 0.75 if _lum(base) > 128 else base + (255 - base) * 0.25
        return base * (1 - t) + other * t, f"on a {name} gradient"  # (S, S, 3)
    canvas = _solid(base, s)
    if kind == "speckled":
        return canvas + rng.normal(0.0, 14.0, (s, s, 1)), f"on a speckled {name} background"
    if kind == "grid":
        step = int(rng.integers(s // 10, s // 6))
        line = base * 0.8 if _lum(base) > 128 else base + 45.0
        canvas[::step, :] = line
        canvas[:, ::step] = line
        return canvas, "on grid paper" if _lum(base) > 128 else f"on a {name} grid"
    return canvas, f"on a {name} background"


# ---------------------------------------------------------------------------------------------
# Styles: (rng, masks, specs, s) -> (canvas, background phrase or None)
# ---------------------------------------------------------------------------------------------


def _pattern_fill(rng: np.random.Generator, colour: Array, pattern: str, s: int) -> Array:
    if pattern == "solid":
        return _solid(colour, s)
    other = _second_colour(colour)
    period = float(rng.uniform(s / 12, s / 6))
    u, v = _coords(rng, s)
    if pattern == "striped":
        sel = (np.floor(u / (period / 2)) % 2).astype(bool)
    elif pattern == "checkered":
        sel = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)
    else:  # dotted
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        sel = du * du + dv * dv < (period * 0.28) ** 2
    return np.where(sel[..., None], other, colour).astype(np.float32)  # (S, S, 3)


def _style_flat(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    canvas, phrase = _background(rng, s, [sp.colour for sp in specs])
    for mask, spec in zip(masks, specs, strict=True):
        fill = _pattern_fill(rng, _jitter(rng, COLOURS[spec.colour]), spec.pattern, s)
        canvas = _mix(canvas, fill, _to_mask(mask))
    return canvas, phrase


def _style_outline(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    canvas, phrase = _background(rng, s, [sp.colour for sp in specs])
    width = int(rng.integers(max(2, s // 40), max(3, s // 18)))
    for mask, spec in zip(masks, specs, strict=True):
        canvas = _mix(canvas, _solid(_jitter(rng, COLOURS[spec.colour]), s), _to_mask(_edge(mask, width)))
    return canvas, phrase


def _style_shaded(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    canvas, phrase = _background(rng, s, [sp.colour for sp in specs])
    for mask, spec in zip(masks, specs, strict=True):
        offset = int(rng.integers(s // 40 + 1, s // 20 + 2))
        shadow = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0, -offset, 0, 1, -offset))
        shadow = shadow.filter(ImageFilter.GaussianBlur(s / 40))
        canvas = canvas * (1.0 - 0.45 * _to_mask(shadow)[..., None])  # (S, S, 3)
        colour = _jitter(rng, COLOURS[spec.colour])
        light, dark = colour + (255 - colour) * 0.55, colour * 0.5
        u, _ = _coords(rng, s)
        t = ((u - u.min()) / max(1e-6, float(u.max() - u.min())))[..., None]  # (S, S, 1)
        canvas = _mix(canvas, light * (1 - t) + dark * t, _to_mask(mask))
        canvas = _mix(canvas, _solid(dark * 0.7, s), 0.8 * _to_mask(_edge(mask, max(1, s // 64))))
    return canvas, phrase


def _jittered(rng: np.random.Generator, mask: Image.Image, s: int) -> Image.Image:
    a = math.radians(float(rng.uniform(-3, 3)))
    k = float(rng.uniform(0.97, 1.03))
    dx, dy = rng.uniform(-0.015 * s, 0.015 * s, 2)
    c = s / 2
    ca, sa = math.cos(a) / k, math.sin(a) / k
    coeffs = (ca, sa, c - ca * c - sa * c + dx, -sa, ca, c + sa * c - ca * c + dy)
    return mask.transform(mask.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _style_sketch(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    paper = _jitter(rng, (244, 240, 228), 5.0)
    canvas = _solid(paper, s) + rng.normal(0.0, 4.0, (s, s, 1))
    ink = _solid(np.full(3, float(rng.uniform(35, 95))), s)
    for mask in masks:
        strokes = np.zeros((s, s), dtype=np.float32)
        for _ in range(int(rng.integers(2, 4))):
            strokes = np.maximum(strokes, _to_mask(_edge(_jittered(rng, mask, s), max(1, s // 80))))
        if rng.random() < 0.7:
            u, _ = _coords(rng, s, math.radians(float(rng.uniform(25, 65))))
            hatch = ((u % float(rng.uniform(s / 20, s / 12))) < max(1.0, s / 90)).astype(np.float32)
            strokes = np.maximum(strokes, 0.55 * hatch * _to_mask(mask))
        canvas = _mix(canvas, ink, strokes * float(rng.uniform(0.7, 1.0)))
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(s / 160))
    return np.asarray(img, dtype=np.float32), None


def _style_pixel(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    bg = _contrasting_bg(rng, [sp.colour for sp in specs])
    # Blocks sized so the (first) object spans 8-14 blocks: coarse, but still a recognisable drawing.
    low = int(np.clip(round(float(rng.uniform(8, 14)) / (2 * specs[0].radius)), 12, 40)) if specs else 16
    canvas = _solid(np.asarray(BG_COLOURS[bg], dtype=np.float32), low)
    for mask, spec in zip(masks, specs, strict=True):
        small = (np.asarray(mask.resize((low, low), Image.Resampling.BOX), dtype=np.float32) > 100).astype(np.float32)
        colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)
        canvas = _mix(canvas, _solid(colour, low), small)
        if rng.random() < 0.5:  # a one-pixel dark rim, as pixel art often has
            rim = _edge(Image.fromarray((small * 255).astype(np.uint8)), 1)
            canvas = _mix(canvas, _solid(colour * 0.35, low), _to_mask(rim))
    img = Image.fromarray(canvas.astype(np.uint8)).resize((s, s), Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.float32), None


def _style_neon(rng: np.random.Generator, masks: list[Image.Image], specs: list[ObjectSpec], s: int):
    canvas = _solid(_jitter(rng, (12, 10, 30), 6.0), s)
    for mask, spec in zip(masks, specs, strict=True):
        colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)
        colour = colour * (255.0 / max(1.0, float(colour.max()))) if colour.max() > 60 else np.full(3, 255.0)
        tube = _edge(mask, int(rng.integers(max(1, s // 64), max(2, s // 32))))
        glow = np.clip(2.0 * _to_mask(tube.filter(ImageFilter.GaussianBlur(s / 25))), 0, 1)
        canvas = _mix(canvas, _solid(colour, s), 0.85 * glow)
        canvas = _mix(canvas, _solid(colour + (255 - colour) * 0.6, s), _to_mask(tube))
    return canvas, None


StyleFn = Callable[[np.random.Generator, list[Image.Image], list[ObjectSpec], int], tuple[Array, str | None]]
STYLES: dict[str, StyleFn] = {
    "flat": _style_flat,
    "outline": _style_outline,
    "shaded": _style_shaded,
    "sketch": _style_sketch,
    "pixel": _style_pixel,
    "neon": _style_neon,
}


def render_objects(
    rng: np.random.Generator, specs: list[ObjectSpec], style: str, size: int, supersample: int = 2
) -> tuple[Image.Image, str | None]:
    """Draw objects in a style.

    Args:
        rng: the image's generator.
        specs: the objects, drawn in order (later ones on top).
        style: a key of :data:`STYLES`.
        size: output side in pixels.
        supersample: drawing resolution multiple (anti-aliasing).

    Returns:
        The RGB image and the background's caption phrase (None for styles with a fixed background).

    Raises:
        KeyError: unknown style (the message lists the valid ones).
    """
    if style not in STYLES:
        raise KeyError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    s = size * supersample
    masks = [
        draw_mask(category_prims(sp.category), s, (sp.centre[0] * s, sp.centre[1] * s), sp.radius * s, sp.angle)
        for sp in specs
    ]
    canvas, phrase = STYLES[style](rng, masks, specs, s)
    return _finish(canvas, size), phrase


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

_STYLE_ADJ = {"flat": ("flat",), "outline": ("hollow", "outlined"), "shaded": ("shaded", "3d")}
_STYLE_NOUN = {
    "flat": ("a flat icon of", "clip art of", "a drawing of"),
    "outline": ("an outline of", "a line drawing of"),
    "shaded": ("a 3d rendering of", "a shaded drawing of"),
}
_LEADS = ("", "", "a photo of", "a picture of", "an image of", "there is", "a drawing of")


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _direction(angle: float) -> str | None:
    k = round(angle / 90.0)
    if abs(angle - 90.0 * k) > 20:
        return None
    return ("right", "up", "left", "down")[k % 4]


def _noun_phrase(rng: np.random.Generator, spec: ObjectSpec, style: str, minimal: bool = False) -> str:
    if minimal:
        return _article(spec.category)
    words = []
    if spec.size != "medium" and rng.random() < 0.5:
        words.append({"small": _pick(rng, ("small", "tiny")), "large": _pick(rng, ("large", "big"))}[spec.size])
    if style in _STYLE_ADJ and rng.random() < 0.25:
        words.append(_pick(rng, _STYLE_ADJ[style]))
    if rng.random() < 0.6:
        words.append(spec.colour)
    if style == "flat" and spec.pattern != "solid" and rng.random() < 0.7:
        words.append(spec.pattern)
    words.append(spec.category)
    direction = _direction(spec.angle) if spec.category == "arrow" else None
    if direction and rng.random() < 0.6:
        words.append(f"pointing {direction}")
    return _article(" ".join(words))


# Leads tied to the rendering style (``style_leads``): the caption says how the picture was made, the
# way real alt-text says "a photo of" for photos and "a drawing of" for drawings.
STYLE_LEADS: dict[str, str] = {"flat": "a photo of", "outline": "a line drawing of", "shaded": "a 3d rendering of"}


def object_caption(
    rng: np.random.Generator,
    specs: list[ObjectSpec],
    style: str,
    bg_phrase: str | None,
    class_frac: float = 0.35,
    style_leads: bool = False,
) -> str:
    """A varied caption naming every object (with some of its attributes) in the image.

    Args:
        rng: the image's generator (captions are part of the image's deterministic draw).
        specs: the objects in the image.
        style: the rendering style (may be named).
        bg_phrase: the background's phrase, or None.
        class_frac: probability that the caption only names the objects (``"a photo of a star"``).
        style_leads: class-only captions start with the style's lead (:data:`STYLE_LEADS`) instead
            of a random one.

    Returns:
        One caption, e.g. ``"a photo of a small red striped star in the top left corner"``.
    """
    # Class-only captions ("a photo of a star"), as much alt-text is. Their duplicates are positives
    # of each other in the contrastive loss, a class-level signal that keeps colour and position from
    # being the easiest way to match an image to its caption; the more of them, the better the
    # zero-shot classes (docs/proxy.md, "The synthetic world").
    minimal = rng.random() < class_frac
    parts = []
    for spec in specs:
        phrase = _noun_phrase(rng, spec, style, minimal)
        if minimal:
            parts.append(phrase)
            continue
        if spec.position != "in the center" and rng.random() < (0.9 if len(specs) > 1 else 0.5):
            phrase += " " + spec.position
        parts.append(phrase)
    body = " and ".join(parts)
    if bg_phrase and not minimal and rng.random() < 0.35:
        body += " " + bg_phrase
    if minimal and style_leads and style in STYLE_LEADS:
        lead = STYLE_LEADS[style]
    elif style in _STYLE_NOUN and rng.random() < 0.2:
        lead = _pick(rng, _STYLE_NOUN[style])
    else:
        lead = _pick(rng, _LEADS)
    return f"{lead} {body}".strip()


# ---------------------------------------------------------------------------------------------
# Textures: (rng, s) -> (canvas, caption)
# ---------------------------------------------------------------------------------------------


def _two_colours(rng: np.random.Generator) -> tuple[str, str]:
    a, b = rng.choice(len(COLOURS), size=2, replace=False)
    names = list(COLOURS)
    return names[int(a)], names[int(b)]


def _tex_noise(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    low = int(rng.choice([4, 8, 16, 32, s]))
    grey = rng.random() < 0.4
    field = rng.normal(128.0, 60.0, (low, low, 1 if grey else 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(field[..., 0] if grey else field).convert("RGB")
    img = img.resize((s, s), Image.Resampling.BICUBIC if low < s else Image.Resampling.NEAREST)
    if low >= 32:
        caption = _pick(rng, ("gray static noise", "grainy gray noise", "tv static")) if grey else _pick(
            rng, ("random colorful noise", "colorful pixel noise", "a random noise image"))
    else:
        caption = _pick(rng, ("blurry gray blotches", "smooth gray noise")) if grey else _pick(
            rng, ("blurry blotches of color", "smooth colorful noise", "a blurry random color pattern"))
    return np.asarray(img, dtype=np.float32), caption


def _tex_stripes(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    c1, c2 = _two_colours(rng)
    orient = _pick(rng, ("vertical", "horizontal", "diagonal"))
    angle = {"vertical": 0.0, "horizontal": math.pi / 2}.get(orient, math.pi / 4 * (1 + 2 * int(rng.integers(2))))
    u, _ = _coords(rng, s, angle)
    period = float(rng.uniform(s / 16, s / 4))
    sel = (np.floor(u / (period / 2)) % 2).astype(bool)[..., None]  # (S, S, 1)
    canvas = np.where(sel, _jitter(rng, COLOURS[c1]), _jitter(rng, COLOURS[c2]))
    caption = _pick(rng, (f"{c1} and {c2} stripes", f"{orient} stripes", f"a pattern of {orient} {c1} and {c2} stripes",
                          "a striped pattern"))
    return canvas.astype(np.float32), caption


def _tex_checker(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    c1, c2 = _two_colours(rng)
    u, v = _coords(rng, s, 0.0 if rng.random() < 0.7 else math.pi / 4)
    period = float(rng.uniform(s / 12, s / 4))
    sel = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)[..., None]  # (S, S, 1)
    canvas = np.where(sel, _jitter(rng, COLOURS[c1]), _jitter(rng, COLOURS[c2]))
    caption = _pick(rng, (f"a {c1} and {c2} checkerboard", "a checkered pattern", "a checkerboard texture"))
    return canvas.astype(np.float32), caption


def _tex_dots(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    c1, c2 = _two_colours(rng)
    u, v = _coords(rng, s)
    period = float(rng.uniform(s / 14, s / 6))
    du, dv = (u % period) - period / 2, (v % period) - period / 2
    sel = (du * du + dv * dv < (period * float(rng.uniform(0.2, 0.35))) ** 2)[..., None]  # (S, S, 1)
    canvas = np.where(sel, _jitter(rng, COLOURS[c1]), _jitter(rng, COLOURS[c2]))
    caption = _pick(rng, (f"{c1} polka dots on {c2}", "a polka dot pattern", f"a pattern of small {c1} dots"))
    return canvas.astype(np.float32), caption


def _tex_scribble(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    bg = _pick(rng, ("white", "beige", "light gray"))
    img = Image.new("RGB", (s, s), tuple(int(v) for v in BG_COLOURS[bg]))
    draw = ImageDraw.Draw(img)
    colourful = rng.random() < 0.5
    for _ in range(int(rng.integers(3, 9))):
        pos, heading = rng.uniform(0, s, 2), float(rng.uniform(0, 2 * math.pi))
        pts = []
        for _ in range(int(rng.integers(8, 25))):
            heading += float(rng.normal(0, 0.7))
            pos = np.clip(pos + (s / 12) * np.array([math.cos(heading), math.sin(heading)]), 0, s)
            pts.append((float(pos[0]), float(pos[1])))
        colour = COLOURS[_pick(rng, list(COLOURS))] if colourful else (40, 40, 40)
        draw.line(pts, fill=colour, width=int(rng.integers(1, max(2, s // 30))), joint="curve")
    caption = _pick(rng, ("colorful scribbles", "a mess of colorful lines") if colourful else (
        "scribbles", "random pen scribbles", "a mess of tangled lines")) + f" on a {bg} background"
    return np.asarray(img, dtype=np.float32), caption


def _tex_gradient(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    name = _pick(rng, list(BG_COLOURS))
    base = _jitter(rng, BG_COLOURS[name], 6.0)
    if rng.random() < 0.5:
        return _solid(base, s), _pick(rng, (f"a plain {name} background", f"an empty {name} background",
                                            "nothing, just a blank background"))
    c2 = _pick(rng, list(COLOURS))
    u, _ = _coords(rng, s)
    t = ((u - u.min()) / max(1e-6, float(u.max() - u.min())))[..., None]  # (S, S, 1)
    return base * (1 - t) + np.asarray(COLOURS[c2], dtype=np.float32) * t, f"a {name} to {c2} gradient"


def _tex_waves(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    c1, c2 = _two_colours(rng)
    u, v = _coords(rng, s)
    phase = u * float(rng.uniform(6, 16)) * math.pi / s + float(rng.uniform(1, 3)) * np.sin(
        v * float(rng.uniform(2, 6)) * math.pi / s)
    t = (0.5 + 0.5 * np.sin(phase))[..., None]  # (S, S, 1)
    canvas = _jitter(rng, COLOURS[c1]) * t + _jitter(rng, COLOURS[c2]) * (1 - t)
    return canvas.astype(np.float32), _pick(rng, (f"wavy {c1} and {c2} lines", "a wavy pattern"))


def _tex_plaid(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    c1, c2 = _two_colours(rng)
    u, v = _coords(rng, s, 0.0)
    period = float(rng.uniform(s / 8, s / 3))
    a = ((u % period) < period * 0.4).astype(np.float32)
    b = ((v % period) < period * 0.4).astype(np.float32)
    t = (0.5 * a + 0.5 * b)[..., None]  # (S, S, 1)
    canvas = _jitter(rng, COLOURS[c1]) * t + _jitter(rng, COLOURS[c2]) * (1 - t)
    return canvas.astype(np.float32), _pick(rng, (f"a {c1} and {c2} plaid pattern", "a tartan fabric"))


def _tex_blobs(rng: np.random.Generator, s: int) -> tuple[Array, str]:
    names = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), size=3, replace=False)]
    field = Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize((s, s), Image.Resampling.BICUBIC)
    f = np.asarray(field, dtype=np.float32)
    levels = np.digitize(f, np.quantile(f, [0.33, 0.66]))  # (S, S) in {0, 1, 2}
    palette = np.stack([_jitter(rng, COLOURS[n]) for n in names])  # (3, 3)
    return palette[levels].astype(np.float32), _pick(rng, ("a camouflage pattern", f"{names[0]} and {names[1]} blobs"))


TextureFn = Callable[[np.random.Generator, int], tuple[Array, str]]
TEXTURES: dict[str, TextureFn] = {
    "noise": _tex_noise,
    "stripes": _tex_stripes,
    "checker": _tex_checker,
    "dots": _tex_dots,
    "scribble": _tex_scribble,
    "gradient": _tex_gradient,
    "waves": _tex_waves,
    "plaid": _tex_plaid,
    "blobs": _tex_blobs,
}


def render_texture(rng: np.random.Generator, kind: str, size: int, supersample: int = 2) -> tuple[Image.Image, str]:
    """Draw an image with no object, and its caption.

    Raises:
        KeyError: unknown texture kind (the message lists the valid ones).
    """
    if kind not in TEXTURES:
        raise KeyError(f"unknown texture {kind!r}; valid: {', '.join(TEXTURES)}")
    canvas, caption = TEXTURES[kind](rng, size * supersample)
    return _finish(canvas, size), caption
