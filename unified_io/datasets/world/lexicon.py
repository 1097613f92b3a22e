"""The world's vocabulary: colours, shapes, backgrounds, pitches, timbres, and their words.

Each list is ordered and fixed: an object's colour or shape is an index into it, so the same seed
draws the same world in every version that keeps these lists.
"""

from typing import Dict, Tuple

import numpy as np

# Saturated, well separated colours (RGB 0..255) for objects.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 185),
    "orange": (245, 140, 30),
    "cyan": (40, 205, 215),
    "pink": (245, 125, 195),
}
COLOUR_NAMES = tuple(COLOURS)
COLOUR_RGB_C3 = np.array([COLOURS[n] for n in COLOUR_NAMES], np.float32)

# Low-saturation backgrounds, far from every object colour.
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "light grey": (205, 205, 205),
    "dark grey": (70, 70, 75),
    "beige": (225, 215, 190),
    "slate": (95, 110, 125),
    "white": (245, 245, 245),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
BACKGROUND_RGB_B3 = np.array([BACKGROUNDS[n] for n in BACKGROUND_NAMES], np.float32)
DISTRACTOR_GREY = (128, 128, 128)

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
SHAPE_PLURALS = {name: name + "s" for name in SHAPE_NAMES}

# Pitch classes: a frequency is drawn uniformly (in log space) inside the band.
PITCH_BANDS_HZ: Dict[str, Tuple[float, float]] = {
    "low": (150.0, 260.0),
    "mid": (400.0, 700.0),
    "high": (1100.0, 1900.0),
}
PITCH_NAMES = tuple(PITCH_BANDS_HZ)
TIMBRE_NAMES = ("sine", "square", "sawtooth", "triangle")
# Video soundtracks: one tone per moving object, from this ladder (distinct per clip).
OBJECT_TONES_HZ = (220.0, 330.0, 440.0, 550.0, 660.0, 880.0, 990.0, 1320.0)

DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_YX = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}

# Relations for "where is A relative to B" questions, keyed by the dominant axis and sign.
RELATIONS = ("left of", "right of", "above", "below")

# 3x3 grid of image regions (rows top..bottom, columns left..right).
REGION_NAMES = (("top left", "top", "top right"),
                ("left", "centre", "right"),
                ("bottom left", "bottom", "bottom right"))

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")


def with_article(phrase: str) -> str:
  """'a red circle' / 'an orange square'."""
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str, count: int) -> str:
  return noun if count == 1 else SHAPE_PLURALS.get(noun, noun + "s")
