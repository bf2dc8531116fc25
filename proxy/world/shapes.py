"""Geometry of the synthetic world's object categories: everyday shapes a person would draw.

Each category is a list of :class:`Prim` in unit coordinates (centred on the origin, fitting the unit
disc, y pointing *up*). Drawing the primitives in order onto a greyscale mask (``value`` 255 adds,
0 cuts a hole) gives the category's silhouette; every rendering style in :mod:`.render` starts from
that mask, so a category looks like the same thing in every style.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "Prim",
    "CATEGORIES",
    "LOOKALIKES",
    "UPRIGHT",
    "category_prims",
    "lookalikes_of",
    "folder_name",
    "display_name",
    "draw_mask",
]


@dataclass(frozen=True)
class Prim:
    """One drawing primitive of a silhouette."""

    kind: str  # "poly" (filled polygon) or "line" (open polyline drawn with a width)
    points: np.ndarray  # (N, 2) unit coordinates, y up
    value: int = 255  # 255 adds to the silhouette, 0 cuts a hole
    width: float = 0.0  # line width as a fraction of the object radius ("line" only)


def _circle(r: float = 0.95, cx: float = 0.0, cy: float = 0.0, n: int = 72, sx: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + sx * r * np.cos(t), cy + r * np.sin(t)], axis=1)  # (n, 2)


def _regular(n: int, r: float = 0.95, phase: float = math.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)  # (n, 2)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.42) -> np.ndarray:
    t = math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)  # (2 * points, 2)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)  # (N, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, 80, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 17.0, (y + 2.5) / 17.0], axis=1)  # (80, 2)


def _spiral() -> np.ndarray:
    t = np.linspace(0.0, 2.6 * 2 * math.pi, 140)
    r = 0.1 + 0.8 * t / t[-1]
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)  # (140, 2)


def _drop() -> np.ndarray:
    t = np.radians(np.linspace(150.0, 390.0, 48))
    arc = np.stack([0.62 * np.cos(t), -0.33 + 0.62 * np.sin(t)], axis=1)  # (48, 2) lower arc
    return np.concatenate([arc, _poly((0.0, 1.0))])  # (49, 2)


def _semicircle() -> np.ndarray:
    t = np.linspace(0.0, math.pi, 48)
    return np.stack([0.95 * np.cos(t), 0.95 * np.sin(t) - 0.45], axis=1)  # (48, 2)


def _rounded_square(half: float = 0.75, corner: float = 0.3) -> np.ndarray:
    """A square whose corners are quarter circles of radius ``corner``."""
    c = half - corner
    arcs = []
    for k, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
        t = np.linspace(k * math.pi / 2, (k + 1) * math.pi / 2, 10)
        arcs.append(np.stack([sx * c + corner * np.cos(t), sy * c + corner * np.sin(t)], axis=1))  # (10, 2)
    return np.concatenate(arcs)  # (40, 2)


def _pie(r: float = 0.95, gap_deg: float = 70.0) -> np.ndarray:
    """A disc with a wedge of ``gap_deg`` degrees cut out (a pie missing a slice)."""
    half = math.radians(gap_deg) / 2
    t = np.linspace(half, 2 * math.pi - half, 64)
    return np.concatenate([_poly((0.0, 0.0)), np.stack([r * np.cos(t), r * np.sin(t)], axis=1)])  # (65, 2)


# Every category: a builder of its primitives. Names are plain English, as a caption would say them.
_BUILDERS: dict[str, Callable[[], list[Prim]]] = {
    "circle": lambda: [Prim("poly", _circle())],
    "square": lambda: [Prim("poly", _poly((-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)))],
    "triangle": lambda: [Prim("poly", _regular(3, 1.0))],
    "star": lambda: [Prim("poly", _star())],
    "arrow": lambda: [
        Prim("poly", _poly((-0.95, -0.2), (0.15, -0.2), (0.15, -0.55), (0.95, 0.0), (0.15, 0.55), (0.15, 0.2),
                           (-0.95, 0.2)))
    ],
    "heart": lambda: [Prim("poly", _heart())],
    "cross": lambda: [
        Prim("poly", _poly((-0.28, 0.95), (0.28, 0.95), (0.28, 0.28), (0.95, 0.28), (0.95, -0.28), (0.28, -0.28),
                           (0.28, -0.95), (-0.28, -0.95), (-0.28, -0.28), (-0.95, -0.28), (-0.95, 0.28),
                           (-0.28, 0.28)))
    ],
    "crescent": lambda: [Prim("poly", _circle()), Prim("poly", _circle(0.8, 0.42, 0.18), value=0)],
    "hexagon": lambda: [Prim("poly", _regular(6))],
    "diamond": lambda: [Prim("poly", _poly((0.0, 1.0), (0.6, 0.0), (0.0, -1.0), (-0.6, 0.0)))],
    "ring": lambda: [Prim("poly", _circle()), Prim("poly", _circle(0.55), value=0)],
    "spiral": lambda: [Prim("line", _spiral(), width=0.16)],
    "lightning bolt": lambda: [
        Prim("poly", _poly((0.15, 1.0), (-0.5, -0.08), (-0.05, -0.08), (-0.3, -1.0), (0.5, 0.12), (0.05, 0.12),
                           (0.5, 1.0)))
    ],
    "pentagon": lambda: [Prim("poly", _regular(5))],
    "octagon": lambda: [Prim("poly", _regular(8, phase=math.pi / 8))],
    "ellipse": lambda: [Prim("poly", _circle(sx=0.55))],
    "trapezoid": lambda: [Prim("poly", _poly((-0.95, -0.55), (0.95, -0.55), (0.5, 0.55), (-0.5, 0.55)))],
    "semicircle": lambda: [Prim("poly", _semicircle())],
    "cloud": lambda: [
        Prim("poly", _circle(0.36, -0.52, -0.12)),
        Prim("poly", _circle(0.5, 0.0, 0.15)),
        Prim("poly", _circle(0.4, 0.5, -0.05)),
        Prim("poly", _poly((-0.52, -0.48), (0.5, -0.45), (0.5, -0.1), (-0.52, -0.1))),
    ],
    "flower": lambda: [
        *(Prim("poly", _circle(0.32, 0.62 * math.cos(a), 0.62 * math.sin(a), n=36))
          for a in np.arange(6) * math.pi / 3),
        Prim("poly", _circle(0.42, n=36)),
        Prim("poly", _circle(0.16, n=24), value=0),
    ],
    "house": lambda: [
        Prim("poly", _poly((-0.68, -0.92), (0.68, -0.92), (0.68, 0.12), (-0.68, 0.12))),
        Prim("poly", _poly((-0.95, 0.08), (0.95, 0.08), (0.0, 0.95))),
        Prim("poly", _poly((-0.17, -0.92), (0.17, -0.92), (0.17, -0.4), (-0.17, -0.4)), value=0),
    ],
    "drop": lambda: [Prim("poly", _drop())],
    # Look-alikes (see LOOKALIKES): each shares its outline or most of its parts with another category.
    "rounded square": lambda: [Prim("poly", _rounded_square())],
    "six-pointed star": lambda: [Prim("poly", _star(6, 1.0, 0.55))],
    "pie": lambda: [Prim("poly", _pie())],
    "chevron": lambda: [Prim("poly", _poly((-0.55, 0.95), (0.0, 0.95), (0.75, 0.0), (0.0, -0.95), (-0.55, -0.95),
                                           (0.2, 0.0)))],
    "kite": lambda: [Prim("poly", _poly((0.0, 1.0), (0.6, 0.35), (0.0, -1.0), (-0.6, 0.35)))],
    "heptagon": lambda: [Prim("poly", _regular(7))],
}

CATEGORIES: tuple[str, ...] = tuple(_BUILDERS)
# Pairs of categories that share an outline or most of their parts: when one is an ID class and the
# other is not, the other is a *hard* near-OOD category (the look-alike OOD that real benchmarks such
# as NINCO or SSB-hard collect). Symmetric; every name is in CATEGORIES.
LOOKALIKES: tuple[tuple[str, str], ...] = (
    ("circle", "ellipse"),
    ("circle", "octagon"),
    ("circle", "ring"),
    ("circle", "pie"),
    ("circle", "heptagon"),
    ("square", "rounded square"),
    ("square", "diamond"),
    ("square", "trapezoid"),
    ("star", "six-pointed star"),
    ("arrow", "chevron"),
    ("crescent", "semicircle"),
    ("crescent", "ring"),
    ("hexagon", "heptagon"),
    ("hexagon", "octagon"),
    ("hexagon", "pentagon"),
    ("pentagon", "heptagon"),
    ("octagon", "heptagon"),
    ("diamond", "kite"),
    ("triangle", "kite"),
    ("semicircle", "pie"),
    ("drop", "heart"),
    ("cloud", "flower"),
)
# Categories with a natural "up": rotated only a little (a heart drawn upside down is rare).
UPRIGHT: frozenset[str] = frozenset({"heart", "house", "cloud", "drop", "lightning bolt", "semicircle", "trapezoid"})


def category_prims(name: str) -> list[Prim]:
    """The primitives of a category.

    Raises:
        KeyError: unknown category; the message lists the valid ones.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown category {name!r}; valid: {', '.join(CATEGORIES)}")
    return _BUILDERS[name]()


def lookalikes_of(categories: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The categories (outside ``categories``) that are look-alikes of one of them, in CATEGORIES order."""
    given = set(categories)
    near = {b for a, b in LOOKALIKES if a in given} | {a for a, b in LOOKALIKES if b in given}
    return tuple(c for c in CATEGORIES if c in near and c not in given)


def folder_name(category: str) -> str:
    """Folder name of a category (spaces become underscores: ``lightning bolt`` -> ``lightning_bolt``)."""
    return category.replace(" ", "_")


def display_name(folder: str) -> str:
    """Inverse of :func:`folder_name`: the words a prompt uses."""
    return folder.replace("_", " ")


def draw_mask(
    prims: list[Prim], size: int, centre: tuple[float, float], radius: float, angle_deg: float
) -> Image.Image:
    """Rasterise primitives into an ``L`` mask (255 inside the silhouette).

    Args:
        prims: the category's primitives (unit coordinates, y up).
        size: side of the square mask in pixels.
        centre: (x, y) pixel position of the object's centre.
        radius: pixels per unit of the primitives' coordinates.
        angle_deg: counter-clockwise rotation.

    Returns:
        The mask, mode ``L``.
    """
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    for prim in prims:
        pts = prim.points @ rot.T  # (N, 2), y up
        xy = np.stack([centre[0] + radius * pts[:, 0], centre[1] - radius * pts[:, 1]], axis=1)  # (N, 2) pixels
        flat = [(float(x), float(y)) for x, y in xy]
        if prim.kind == "poly":
            draw.polygon(flat, fill=prim.value)
        else:
            draw.line(flat, fill=prim.value, width=max(1, round(prim.width * radius)), joint="curve")
    return mask
