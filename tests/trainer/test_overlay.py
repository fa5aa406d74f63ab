"""Overlays show each segment: outlined, labelled, and two touching instances of one class told apart."""

from __future__ import annotations

import numpy as np

from m2f_trainer.data import LabelMap
from m2f_trainer.tasks.overlay import OUTLINE, draw_overlay

CATEGORIES = [
    {"id": 1, "name": "square", "color": [220, 20, 60], "isthing": 1},
    {"id": 7, "name": "sky", "color": [70, 130, 180], "isthing": 0},
]


def _scene():
    """A sky-coloured 64x64 image with two red squares side by side (touching at column 32)."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:] = CATEGORIES[1]["color"]
    left, right = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    left[20:44, 8:32], right[20:44, 32:56] = True, True
    image[left | right] = CATEGORIES[0]["color"]
    sky = ~(left | right)
    return image, left, right, sky


def test_touching_instances_of_one_class_are_outlined_and_shaded_apart():
    label_map = LabelMap.from_categories(CATEGORIES, contiguous_id=True, source="test")
    square, sky_class = label_map.class_of(1), label_map.class_of(7)
    image, left, right, sky = _scene()
    picture = np.asarray(draw_overlay(image, [(sky, sky_class, 0.9), (left, square, 0.8), (right, square, 0.7)],
                                      label_map))

    assert picture.shape == image.shape
    # The seam between the two squares is drawn (below the labels): each edge column is the outline colour.
    assert (picture[34:42, 31] == OUTLINE).all() and (picture[34:42, 32] == OUTLINE).all()
    # Interiors keep a blend, and the two instances of one class get different shades.
    left_inside, right_inside = picture[38, 20].astype(int), picture[38, 44].astype(int)
    assert not (left_inside == OUTLINE).all() and np.abs(left_inside - right_inside).max() > 10
    # A class drawn once keeps its own colour: the sky blend equals the sky colour (image and class agree).
    assert np.abs(picture[60, 60].astype(int) - CATEGORIES[1]["color"]).max() <= 1
    # The image border is not an edge.
    assert not (picture[63, 30] == OUTLINE).all()


def test_an_empty_segment_draws_nothing():
    label_map = LabelMap.from_categories(CATEGORIES, contiguous_id=True, source="test")
    image, *_ = _scene()
    picture = draw_overlay(image, [(np.zeros((64, 64), bool), label_map.class_of(1), 0.5)], label_map)
    assert np.array_equal(np.asarray(picture), image)
