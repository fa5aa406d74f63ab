"""Overlay PNGs: predicted segments blended over the image, each outlined, with its class (and score).

Drawn the way detectron2's Visualizer does it, because a blend alone fails exactly where it matters: two
touching instances of one class, or a segment whose class colour is the image's own colour, look like one
flat region. So every segment gets an outline, and where a class has several segments each after the first
gets a lighter or darker shade of the class colour.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ALPHA = 0.5
OUTLINE = (255, 255, 255)
SHADES = (0.0, 0.5, -0.5, 0.25, -0.25, 0.7, -0.7)  # toward white (+) or black (-), as a fraction of the way


def _label(label_map, class_index: int, score: float | None) -> str:
    name = label_map.name(class_index)
    return name if score is None else f"{name} {score:.2f}"


def _instance_colour(base: tuple[int, int, int], instance: int) -> np.ndarray:
    """The class colour for the class's `instance`-th segment (0-based): itself, then alternately lighter and
    darker shades, so neighbours differ visibly and reruns draw the same."""
    shift = SHADES[instance % len(SHADES)]
    target = 255.0 if shift > 0 else 0.0
    colour = np.asarray(base, dtype=np.float32)
    return colour + abs(shift) * (target - colour)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's own edge pixels; the image border is not an edge (border_value=1)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def draw_overlay(image: np.ndarray, segments: list[tuple[np.ndarray, int, float | None]], label_map) -> Image.Image:
    """`image` [H,W,3] uint8 with `segments` (bool mask [H,W], contiguous class, score or None) drawn on it:
    a blend of the segment's colour, a one-pixel white outline and the label at the segment's box corner."""
    canvas = image.astype(np.float32).copy()
    outlines = np.zeros(image.shape[:2], dtype=bool)
    seen: Counter[int] = Counter()
    colours = []
    for mask, class_index, _ in segments:
        colour = _instance_colour(label_map.color(class_index), seen[class_index])
        seen[class_index] += 1
        colours.append(colour)
        canvas[mask] = (1 - ALPHA) * canvas[mask] + ALPHA * colour
        outlines |= _boundary(mask)
    canvas[outlines] = OUTLINE
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for (mask, class_index, score), colour in zip(segments, colours, strict=True):
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue
        text = _label(label_map, class_index, score)
        x, y = int(cols.min()), int(rows.min())
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x, y), text, fill=tuple(int(c) for c in colour))
    return picture
