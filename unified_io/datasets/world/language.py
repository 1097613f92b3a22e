"""Words for the world: captions, object phrases, questions with their answers.

Question builders take a random generator and a scene and return `(question, answer)`, or None
when the scene cannot support that question (e.g. no object with a unique shape); callers then
draw another scene. Answers are short, lower-case, and use digits for counts.
"""

from typing import List, Optional, Tuple

import numpy as np

from unified_io.datasets.world import lexicon
from unified_io.datasets.world.scenes import Scene, SceneObject
from unified_io.datasets.world.tones import Beeps
from unified_io.datasets.world.video import Clip

QA = Optional[Tuple[str, str]]

_MIN_RELATION_GAP = 0.1  # centre distance along the asked axis, fraction of the side


def region(obj: SceneObject) -> str:
  """The cell of a 3x3 grid holding the object's centre: 'top left', 'centre', ..."""
  row, col = (min(2, int(c * 3)) for c in obj.center_yx)
  return lexicon.REGION_NAMES[row][col]


def size_word(obj: SceneObject, min_size: float, max_size: float) -> str:
  """'small ' / 'large ' for the bottom / top third of the diameter range, else ''."""
  third = (max_size - min_size) / 3
  diameter = 2 * obj.radius
  if diameter < min_size + third:
    return "small "
  if diameter > max_size - third:
    return "large "
  return ""


def reading_order(scene: Scene) -> List[SceneObject]:
  """Objects by grid row, then left to right."""
  return sorted(scene.objects, key=lambda o: (min(2, int(o.center_yx[0] * 3)), o.center_yx[1]))


def join_list(phrases: List[str]) -> str:
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_scene(scene: Scene, min_size: float, max_size: float) -> str:
  """'A red circle at the top left and a small blue square in the centre, on a beige background.'"""
  phrases = []
  for obj in reading_order(scene):
    where = "in the centre" if region(obj) == "centre" else f"at the {region(obj)}"
    phrases.append(f"{lexicon.with_article(size_word(obj, min_size, max_size) + obj.name)} {where}")
  text = join_list(phrases)
  return f"{text[0].upper()}{text[1:]}, on {lexicon.with_article(scene.background)} background."


def referring_expression(obj: SceneObject) -> str:
  return f"the {obj.name}"


def unique_by(scene: Scene, attribute: str) -> List[SceneObject]:
  """Objects whose `attribute` ('shape' or 'colour') no other object of the scene shares."""
  values = [getattr(o, attribute) for o in scene.objects]
  return [o for o, v in zip(scene.objects, values) if values.count(v) == 1]


def _pick(rng: np.random.Generator, items):
  return items[int(rng.integers(len(items)))]


def colour_question(rng: np.random.Generator, scene: Scene) -> QA:
  candidates = unique_by(scene, "shape")
  if not candidates:
    return None
  obj = _pick(rng, candidates)
  return f"What colour is the {obj.shape}?", obj.colour


def shape_question(rng: np.random.Generator, scene: Scene) -> QA:
  candidates = unique_by(scene, "colour")
  if not candidates:
    return None
  obj = _pick(rng, candidates)
  return f"What shape is the {obj.colour} object?", obj.shape


def count_question(rng: np.random.Generator, scene: Scene) -> QA:
  """How many objects / <shape>s / <colour> objects (the asked kind may be absent: answer 0)."""
  kind = int(rng.integers(3))
  if kind == 0:
    return "How many objects are there?", str(len(scene.objects))
  if kind == 1:
    shape = _pick(rng, lexicon.SHAPE_NAMES)
    count = sum(o.shape == shape for o in scene.objects)
    return f"How many {lexicon.SHAPE_PLURALS[shape]} are there?", str(count)
  colour = _pick(rng, lexicon.COLOUR_NAMES)
  count = sum(o.colour == colour for o in scene.objects)
  return f"How many {colour} objects are there?", str(count)


def relation(a: SceneObject, b: SceneObject) -> Optional[str]:
  """Where a is relative to b ('left', 'right', 'above', 'below'), or None when not clear-cut:
  the centres must differ by the gap along one axis and by at most half that along the other."""
  dy, dx = a.center_yx[0] - b.center_yx[0], a.center_yx[1] - b.center_yx[1]
  if abs(dx) >= _MIN_RELATION_GAP and abs(dx) >= 2 * abs(dy):
    return "left" if dx < 0 else "right"
  if abs(dy) >= _MIN_RELATION_GAP and abs(dy) >= 2 * abs(dx):
    return "above" if dy < 0 else "below"
  return None


def position_question(rng: np.random.Generator, scene: Scene) -> QA:
  pairs = [(a, b) for a in scene.objects for b in scene.objects
           if a is not b and relation(a, b) is not None]
  if not pairs:
    return None
  a, b = _pick(rng, pairs)
  return (f"Is the {a.name} left of, right of, above or below the {b.name}?", relation(a, b))


SCENE_QUESTIONS = {"colour": colour_question, "shape": shape_question, "count": count_question,
                   "position": position_question}


def direction_question(clip: Clip) -> Tuple[str, str]:
  return "Which way are the objects moving?", clip.direction


def moving_count_question(rng: np.random.Generator, clip: Clip) -> Tuple[str, str]:
  question = _pick(rng, ("How many objects are moving?", "How many tones can you hear?"))
  return question, str(clip.num_moving)


def describe_beeps(beeps: Beeps) -> str:
  """'three high beeps of a square wave' / 'one low beep of a sine wave'."""
  noun = "beep" if beeps.count == 1 else "beeps"
  return (f"{lexicon.NUMBER_WORDS[beeps.count]} {beeps.pitch} {noun} of "
          f"{lexicon.with_article(beeps.timbre)} wave")


def beeps_question(rng: np.random.Generator, beeps: Beeps) -> Tuple[str, str]:
  kind = int(rng.integers(3))
  if kind == 0:
    return "Is the pitch low, mid or high?", beeps.pitch
  if kind == 1:
    return "How many beeps are there?", str(beeps.count)
  return "Is the wave a sine, square, sawtooth or triangle?", beeps.timbre
