"""Prompt dictionary: consistent slots, stateless per-example sampling, the null prompt rate."""

import numpy as np
import pytest
import tensorflow as tf

from unified_io.data import prompts as P

REQUIRED_KINDS = ("image_caption", "vqa", "refexp", "detection", "text_to_image", "object_to_mask",
                  "video_qa", "video_caption", "audio_caption", "audio_classification",
                  "text_to_audio", "text_instruction")


@pytest.mark.parametrize("kind", sorted(P.PROMPTS))
def test_every_kind_has_several_templates_with_the_same_slots(kind):
  assert len(P.PROMPTS[kind]) >= 4
  assert len(set(P.PROMPTS[kind])) == len(P.PROMPTS[kind])
  assert P.num_slots(kind) in (0, 1)
  assert all("{" not in t.replace("{}", "") for t in P.PROMPTS[kind])


def test_required_kinds_and_aliases_exist():
  for kind in REQUIRED_KINDS + tuple(P.ALIASES):
    assert P.templates(kind)
  with pytest.raises(KeyError, match="no prompts for task kind 'nope'"):
    P.templates("nope")


def test_sampling_is_stateless_and_covers_the_templates():
  seeds = [tf.constant([i, 3], tf.int64) for i in range(200)]
  first = [P.sample_prompt("vqa", s, "Is it red?").numpy() for s in seeds]
  again = [P.sample_prompt("vqa", s, "Is it red?").numpy() for s in seeds]
  assert first == again
  expected = {t.replace("{}", "Is it red?").encode() for t in P.PROMPTS["vqa"]}
  assert set(first) == expected


def test_filling_slots_inside_tf_data_with_tricky_arguments():
  texts = ["a dog {}", "back\\slash $1 \\1", ""]
  ds = tf.data.Dataset.from_tensor_slices(texts).enumerate().map(
      lambda i, t: P.sample_prompt("refexp", tf.stack([i, i]), t))
  out = [x.decode() for x in ds.as_numpy_iterator()]
  for text, prompt in zip(texts, out):
    assert any(prompt == t.format(text) for t in P.PROMPTS["refexp"]), prompt


def test_argument_count_is_checked():
  with pytest.raises(ValueError, match="take 1 argument"):
    P.sample_prompt("vqa", tf.constant([0, 0]))
  with pytest.raises(ValueError, match="take 0 argument"):
    P.sample_prompt("detection", tf.constant([0, 0]), "x")


def test_null_prompt_rate_is_about_ten_percent_and_deterministic():
  assert P.NULL_PROMPT_RATE == 0.1
  seeds = [tf.constant([7, i], tf.int64) for i in range(20)]
  ds = tf.data.Dataset.range(2000).map(
      lambda i: P.maybe_null_prompt("draw a cat", tf.stack([tf.constant(7, tf.int64), i])))
  out = list(ds.as_numpy_iterator())
  assert [P.maybe_null_prompt("draw a cat", s).numpy() for s in seeds] == out[:20]
  rate = np.mean([x == b"" for x in out])
  assert 0.07 < rate < 0.13
  assert set(out) == {b"", b"draw a cat"}
  assert all(P.maybe_null_prompt("x", s, rate=0.0).numpy() == b"x" for s in seeds)
  assert all(P.maybe_null_prompt("x", s, rate=1.0).numpy() == b"" for s in seeds)
