"""Stage 3 and the registry: raw fields -> a registered task -> the model batch contract -> a loss.

The all-modality tiny config is the release's (the full golden file), with the text vocabulary at
its real 33280 rows since our token ids reach 33224.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io import contract
from unified_io.presets import make_config
from unified_io.data import registry
from unified_io.data import vocab as V
from unified_io.contract import DataConfig, nest_batch
from unified_io.data import pipeline
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.preprocess import unified_preprocessor
from unified_io.interop.release import config_from_release
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel

BATCH = 2


@pytest.fixture(scope="module")
def model_cfg(golden_full):
  cfg = config_from_release(json.loads(str(golden_full["meta/config_json"])))
  return dataclasses.replace(cfg, trunk=dataclasses.replace(cfg.trunk, text_vocab_size=33280))


@pytest.fixture(scope="module")
def data_cfg(model_cfg):
  return DataConfig.from_model(model_cfg)


@pytest.fixture(scope="module")
def lengths(data_cfg):
  return {**data_cfg.default_lengths(), "text_inputs": 24, "text_targets": 12,
          "image_input_samples": 48, "audio_input_samples": 20, "num_frames": 2}


def _raw_examples():
  """Four raw examples: every modality, text only, image -> image, audio -> text."""
  rng = np.random.default_rng(0)
  wave = (0.3 * np.sin(np.arange(40000) * 0.05)).astype(np.float32)
  full = {"text_inputs": "what happens <extra_id_210> <extra_id_500> here?",
          "text_targets": "a red ball rolls",
          "image_inputs": rng.integers(0, 256, (90, 120, 3), dtype=np.uint8),
          "image_history": rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8),
          "audio_inputs": wave, "audio_history": np.stack([wave[:30000]] * 3),
          "image_targets": rng.integers(0, 256, (70, 70, 3), dtype=np.uint8),
          "audio_targets": wave}
  keys = {"all": list(full), "text": ["text_inputs", "text_targets"],
          "image": ["text_inputs", "image_inputs", "image_targets"],
          "audio": ["text_inputs", "audio_inputs", "text_targets"]}
  return [dict({k: full[k] for k in names}, **{"meta/kind": kind}) for kind, names in keys.items()]


def _pipeline(data_cfg, lengths, converter=None, examples=None):
  """Stage 2 on each raw example, then stage 3: the converted examples."""
  converter = converter or UnifiedIOFeatureConverter(data_config=data_cfg)
  stage2 = None
  for example in examples or _raw_examples():
    ds = unified_preprocessor(tf.data.Dataset.from_tensors(example), lengths, data_config=data_cfg)
    stage2 = ds if stage2 is None else stage2.concatenate(ds)
  return converter(stage2, lengths)


@pytest.fixture(scope="module")
def rows(data_cfg, lengths):
  """The four converted examples (numpy), computed once."""
  return [{k: v.numpy() for k, v in x.items()} for x in _pipeline(data_cfg, lengths)]


def _batch(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_converted_batch_is_exactly_the_batch_spec(model_cfg, lengths, rows):
  flat = _batch(rows[:BATCH])
  spec = contract.batch_spec(model_cfg, BATCH, lengths)
  flat_spec = {"/".join(k.key for k in path): s
               for path, s in jax.tree_util.tree_leaves_with_path(spec)}
  assert sorted(flat) == sorted(flat_spec)
  for key, s in flat_spec.items():
    assert flat[key].shape == s.shape, key
    assert flat[key].dtype == s.dtype, key


def test_converted_values(rows):
  full, text_only, image_only, audio_only = rows
  # Text: padding masked, decoder inputs are the targets shifted right behind BOS 0.
  t = full["targets/text/targets"]
  np.testing.assert_array_equal(full["targets/text/inputs"], np.concatenate([[0], t[:-1]]))
  np.testing.assert_array_equal(full["targets/text/mask"], (t > 0).astype(np.int32))
  assert full["inputs/text/pos_ids"].tolist() == list(range(24))
  # Absent modalities are all zeros with zero masks.
  for key in ("inputs/image/mask", "inputs/audio/mask", "inputs/image_history/mask",
              "targets/image/mask", "targets/audio/mask"):
    assert text_only[key].sum() == 0, key
  assert np.abs(text_only["inputs/image/input"]).sum() == 0
  assert image_only["targets/text/mask"].sum() == 0
  # Present ones: frames trimmed to num_frames, both history frames valid, targets masked.
  assert full["inputs/image_history/mask"].shape == (2, 64)
  assert full["inputs/image_history/mask"].any(axis=1).all()
  assert image_only["targets/image/mask"].sum() > 0 and audio_only["inputs/audio/mask"].sum() > 0
  assert audio_only["targets/audio/mask"].sum() == 0


def _random_params(model, batch):
  """Random parameters from the abstract tree: no compiled init (it costs ~100 s on CPU)."""
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), abstract)


def test_model_forward_and_loss_trace_on_a_converted_all_modality_batch(model_cfg, rows):
  """Every encoder, both tokenizers and the loss accept the converted batch (traced, not run:
  compiling the all-modality model costs ~40 s on CPU and other tests already run it)."""
  batch = nest_batch(_batch(rows[:BATCH]))
  model = UnifiedIOModel(model_cfg)
  params = jax.eval_shape(lambda: _random_params(model, batch))
  loss, per_modality = jax.eval_shape(model.loss_fn, params, batch)
  assert loss.shape == () and set(per_modality) == {"loss/text", "loss/image", "loss/audio"}


def test_model_loss_runs_on_a_converted_text_batch():
  """A real forward + loss of the tiny text model on converted data: finite, and padding-blind."""
  model_cfg = make_config("tiny")
  data_cfg = DataConfig.from_model(model_cfg)
  examples = [{"text_inputs": f"question {i} about <extra_id_{300 + i}>",
               "text_targets": "answer " * (i + 1)} for i in range(4)]

  def batch(text_inputs):
    ds = _pipeline(data_cfg, {"text_inputs": text_inputs, "text_targets": 12}, examples=examples)
    return nest_batch({k: v.numpy() for k, v in next(iter(ds.batch(4))).items()})
  model = UnifiedIOModel(model_cfg)
  params = _random_params(model, batch(24))
  loss_fn = jax.jit(model.loss_fn)
  loss, _ = loss_fn(params, batch(24))
  assert np.isfinite(float(loss)) and float(loss) > 0
  # Longer padding changes nothing: the masks the converter wrote hide it.
  longer = batch(32)
  np.testing.assert_allclose(float(loss_fn(params, longer)[0]), float(loss), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Registry: a task pulled through the pipeline with the model's converter
# ------------------------------------------------------------------------------------------------
def _register(name, data_cfg, after_stage2=()):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    n = 6
    images = np.stack([np.full((40, 30, 3), 20 * i, np.uint8) for i in range(n)])
    return tf.data.Dataset.from_tensor_slices({
        "question": [f"what colour is picture {i}?" for i in range(n)],
        "answer": [f"grey {i}" for i in range(n)], "image": images})

  def to_raw_fields(ds):
    return ds.map(lambda ex: {"text_inputs": ex["question"], "text_targets": ex["answer"],
                              "image_inputs": ex["image"], "meta/answer": ex["answer"]})

  return registry.add_task(name, seqio.FunctionDataSource(dataset_fn, splits=["train"]),
                           [to_raw_fields], modalities=("text", "image"),
                           after_stage2=after_stage2, replace=True)


def test_registered_task_and_mixture_through_the_pipeline(model_cfg, data_cfg, lengths):
  converter = UnifiedIOModel(model_cfg).feature_converter()
  assert converter.data_config == data_cfg
  _register("test_converter_vqa_a", data_cfg)
  # A step after stage 2 (as the denoising objective is): swap the prefix [Text] [S] -> [R].
  swap = seqio.map_over_dataset(lambda ex: {**ex, "text_inputs": tf.concat(
      [[V.PREFIX_TOKENS["[Text] [R]"]], ex["text_inputs"][1:]], 0)})
  _register("test_converter_vqa_b", data_cfg, after_stage2=[swap])
  registry.add_mixture("test_converter_mix", [("test_converter_vqa_a", 1.0),
                                              ("test_converter_vqa_b", 2.0)],
                       curriculum={"stages": "any object"}, replace=True)
  assert registry.task_modalities("test_converter_vqa_a") == (Modality.TEXT, Modality.IMAGE)
  assert registry.mixture_curriculum("test_converter_mix") == {"stages": "any object"}
  assert registry.rates("test_converter_mix") == {"test_converter_vqa_a": 1.0,
                                                 "test_converter_vqa_b": 2.0}
  spec = contract.batch_spec(model_cfg, 3, lengths)
  for name in ("test_converter_vqa_a", "test_converter_mix"):
    ds = pipeline.get_dataset(name, converter, lengths, shuffle=False, seed=5,
                              num_epochs=1 if name.endswith("_a") else None).batch(3)
    batch = nest_batch({k: v.numpy() for k, v in next(iter(ds)).items()})
    assert jax.tree_util.tree_map(np.shape, batch) == jax.tree_util.tree_map(
        lambda s: s.shape, spec)
    assert batch["inputs"]["image"]["mask"].sum() > 0
    first = batch["inputs"]["text"]["tokens"][:, 0]
    assert set(first) <= {V.PREFIX_TOKENS["[Text] [S]"], V.PREFIX_TOKENS["[Text] [R]"]}
  b = pipeline.get_dataset("test_converter_vqa_b", converter, lengths, shuffle=False).batch(2)
  first = next(iter(b))["inputs/text/tokens"][:, 0].numpy()
  assert (first == V.PREFIX_TOKENS["[Text] [R]"]).all()


def test_reusing_built_pipelines_hands_a_build_over_once_inside_its_block(model_cfg, data_cfg,
                                                                         lengths):
  """What the trainer's input check and its open share: inside the block the next call with the
  same arguments gets the dataset built first (which reads as a new build does), once; other
  arguments, another converter, a second call or leaving the block build anew (a shuffled
  dataset iterated twice would give another order)."""
  converter = UnifiedIOModel(model_cfg).feature_converter()
  _register("test_converter_reused", data_cfg)
  build = lambda c=converter, **kw: pipeline.get_dataset(  # noqa: E731
      "test_converter_reused", c, lengths, shuffle=True, num_epochs=None, **{"seed": 5, **kw})
  first = lambda ds: next(iter(ds.batch(3)))["inputs/text/tokens"].numpy()  # noqa: E731
  with pipeline.reusing_built_pipelines():
    built = build()
    assert build(seed=6) is not built
    assert build(shard_info=seqio.ShardInfo(0, 2)) is not built
    assert build(UnifiedIOModel(model_cfg).feature_converter()) is not built
    assert build() is built
    again = build()
    assert again is not built
  assert build() is not built
  np.testing.assert_array_equal(first(built), first(again))


# ------------------------------------------------------------------------------------------------
# Refusals, naming the feature
# ------------------------------------------------------------------------------------------------
def test_refuses_packing():
  with pytest.raises(ValueError, match="pair packing"):
    UnifiedIOFeatureConverter(DataConfig(), pack=True)


@pytest.mark.parametrize("change,match", [
    ({"image_input_samples": 65}, "`image_input_samples` = 65 exceeds the image ViT grid of 64"),
    ({"num_frames": 5}, "`num_frames` = 5 exceeds"),
    ({"text_targets": None}, "`text_targets` is missing"),
    ({"image_samples": 3}, "`image_samples` is unknown"),
])
def test_refuses_lengths_it_cannot_honour(data_cfg, lengths, change, match):
  bad = {k: v for k, v in {**lengths, **change}.items() if v is not None}
  converter = UnifiedIOFeatureConverter(data_config=data_cfg)
  with pytest.raises(ValueError, match=match):
    converter.get_model_feature_lengths(bad)


def test_refuses_a_dataset_without_stage_2(data_cfg, lengths):
  ds = tf.data.Dataset.from_tensors({"text_inputs": tf.constant([5, 1])})
  with pytest.raises(ValueError, match="stage-2 field `text_targets` is missing"):
    UnifiedIOFeatureConverter(data_config=data_cfg)(ds, lengths)


def test_task_masks_option_adds_them(data_cfg, lengths):
  ds = _pipeline(data_cfg, lengths, UnifiedIOFeatureConverter(data_config=data_cfg,
                                                              task_masks=True),
                 examples=_raw_examples()[2:3])
  row = next(iter(ds))
  assert row["targets/image/task_mask"].shape == (data_cfg.num_target_tokens("image"),)
  assert row["targets/audio/task_mask"].shape == (data_cfg.num_target_tokens("audio"),)


def test_text_only_config_emits_only_text(lengths):
  cfg = DataConfig(input_modalities=("text",), target_modalities=("text",))
  ds = _pipeline(cfg, {"text_inputs": 24, "text_targets": 12},
                 UnifiedIOFeatureConverter(data_config=cfg), examples=_raw_examples()[1:2])
  assert sorted(next(iter(ds))) == sorted(
      ["inputs/text/tokens", "inputs/text/mask", "inputs/text/pos_ids", "targets/text/inputs",
       "targets/text/targets", "targets/text/mask", "targets/text/loss_mask"])


def test_two_models_pipelines_side_by_side_keep_their_own_sizes():
  """No global data config: datasets built for two models before either is read each keep their
  model's sizes (the converter carries the contract into stage 2)."""
  _register("test_converter_vqa_two", None)
  small = DataConfig(image_input_size=(32, 32), image_patch_size=16,
                     input_modalities=("text", "image"), target_modalities=("text",))
  large = DataConfig(image_input_size=(64, 64), image_patch_size=16,
                     input_modalities=("text", "image"), target_modalities=("text",))
  lengths = {"text_inputs": 16, "text_targets": 8}
  built = {cfg: pipeline.get_dataset("test_converter_vqa_two", UnifiedIOFeatureConverter(cfg),
                                     {**lengths, "image_input_samples": cfg.num_patches("image")},
                                     shuffle=False, seed=0)
           for cfg in (small, large)}
  for cfg, ds in built.items():
    row = next(ds.as_numpy_iterator())
    assert row["inputs/image/input"].shape == (cfg.num_patches("image"), 16 * 16 * 3)
    assert row["inputs/image/mask"].sum() > 0
