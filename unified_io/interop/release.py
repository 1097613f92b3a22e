"""The release's config format and parameter layout, and their translation to ours.

The release (`allenai/uio2-*` weights, and the golden files' `param/*` and `meta/config_json`) names
parameters like `encoder.layers_0.attention.query.weight` with torch `nn.Linear` weights [out, in].
Our flax tree has `encoder/layers_0/attention/query/kernel` [in..., out...]. The translation is
derived from our own parameter tree, so every parameter we have must come from exactly one release
tensor of the right shape; release tensors we do not use are reported, not silently dropped.
"""

import dataclasses
import json
import logging
from typing import Dict, Iterable, List, Mapping, Tuple

import numpy as np

from unified_io.config import (AudioVQGANConfig, ConfigError, ImageVQGANConfig, ResamplerConfig,
                               TrunkConfig, UnifiedIOConfig, VitConfig)
from unified_io.modalities import Modality


class CheckpointError(ValueError):
  """A release checkpoint lacks a tensor we need, or has one of the wrong shape."""


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
_TRUNK_FIELDS = {  # ours: the release's t5_config key
    "emb_dim": "emb_dim", "num_heads": "num_heads", "head_dim": "head_dim",
    "num_encoder_layers": "num_encoder_layers", "num_decoder_layers": "num_decoder_layers",
    "mlp_dim": "mlp_dim", "text_vocab_size": "vocab_size", "image_vocab_size": "image_vocab_size",
    "audio_vocab_size": "audio_vocab_size", "encoder_max_image_length": "encoder_max_image_length",
    "decoder_max_image_length": "decoder_max_image_length", "qk_norm": "qk_norm",
}
# Release switches we reproduce only in one setting: {key: the value we implement}.
_FIXED = {"mlp_activations": ["silu", "linear"], "logits_via_embedding": True,
          "decoder_xattention_internval": 1, "text_pos_emb": "llama_rope"}


def _get(t5: Mapping, key: str):
  if key not in t5:
    raise ConfigError(f"release config field `t5_config.{key}` is missing")
  return t5[key]


def present_modalities(param_names: Iterable[str], prefix: str) -> List[Modality]:
  """Modalities with a `<prefix>.<modality>.modality_embedding` tensor, in sequence order."""
  names = set(param_names)
  return [m for m in Modality if f"{prefix}.{m.value}.modality_embedding" in names]


def config_from_release(config: Mapping, param_names: Iterable[str] = (), dtype: str = "float32"
                        ) -> UnifiedIOConfig:
  """Our config from the release's `config.json` structure; modalities from the tensors present."""
  if isinstance(config, str):
    config = json.loads(config)
  if "t5_config" not in config:
    raise ConfigError("release config has no `t5_config` section; is this a UIO2 config.json?")
  t5 = config["t5_config"]
  for key, wanted in _FIXED.items():
    if key in t5 and t5[key] != wanted:
      raise ConfigError(f"release config field `t5_config.{key}` = {t5[key]!r} is not supported "
                        f"(only {wanted!r})")
  fields = {ours: _get(t5, theirs) for ours, theirs in _TRUNK_FIELDS.items()}
  fields["max_text_length"] = max(_get(t5, "encoder_max_text_length"),
                                  _get(t5, "decoder_max_text_length"))
  fields["dropout_rate"] = float(t5.get("dropout_rate", 0.0))
  # The release disables RoPE when its table width (head_dim) equals emb_dim; reproduce that.
  fields["use_rope"] = fields["head_dim"] != fields["emb_dim"]
  if not fields["use_rope"]:
    logging.warning("head_dim == emb_dim: the release silently runs this config without RoPE; "
                    "so do we, to match its numbers")
  trunk = TrunkConfig(dtype=dtype, **fields)

  names = list(param_names)
  inputs = present_modalities(names, "input_embedders") or config.get("input_modalities", ["text"])
  targets = present_modalities(names, "target_embedders") or config.get("target_modalities", ["text"])
  inputs = [Modality(m) for m in inputs]
  targets = [Modality(m) for m in targets]
  uses_image_vit = Modality.IMAGE in inputs or Modality.IMAGE_HISTORY in inputs
  uses_audio_vit = Modality.AUDIO in inputs or Modality.AUDIO_HISTORY in inputs
  components = dict(
      image_vit=_vit(config, "image_vit_cfg", t5, "default_image_vit_size") if uses_image_vit else None,
      audio_vit=_vit(config, "audio_vit_cfg", t5, "default_audio_vit_size") if uses_audio_vit else None,
      image_history=(_resampler(config, "image_history_cfg")
                     if Modality.IMAGE_HISTORY in inputs else None),
      audio_history=(_resampler(config, "audio_history_cfg")
                     if Modality.AUDIO_HISTORY in inputs else None),
      image_vqgan=_image_vqgan(config) if Modality.IMAGE in targets else None,
      audio_vqgan=_audio_vqgan(config) if Modality.AUDIO in targets else None,
  )
  if Modality.IMAGE_HISTORY in inputs:
    components["image_history_input_size"] = tuple(_get(t5, "default_image_history_vit_size"))
  if Modality.AUDIO_HISTORY in inputs:
    components["audio_history_input_size"] = tuple(_get(t5, "default_audio_history_vit_size"))
  return UnifiedIOConfig(trunk=trunk, input_modalities=tuple(inputs), target_modalities=tuple(targets),
                         freeze_vit=bool(config.get("freeze_vit", True)), **components)


def _section(config: Mapping, name: str) -> Mapping:
  if name not in config:
    raise ConfigError(f"release config section `{name}` is missing")
  return config[name]


def _field(section: Mapping, section_name: str, key: str):
  if key not in section:
    raise ConfigError(f"release config field `{section_name}.{key}` is missing")
  return section[key]


def _vit(config: Mapping, name: str, t5: Mapping, size_key: str) -> VitConfig:
  vc = _section(config, name)
  f = lambda key: _field(vc, name, key)  # noqa: E731
  if name == "image_vit_cfg":
    num_pos = f("num_pos")
  else:  # the AST table: class, distillation, then the patches of its default input size
    h, w = (s // f("patch_size") for s in f("default_input_size"))
    num_pos = max(514, 2 + h * w)
  return VitConfig(emb_dim=f("emb_dim"), num_heads=f("num_heads"), head_dim=f("head_dim"),
                   num_layers=f("num_layers"), mlp_dim=f("mlp_dim"), patch_size=f("patch_size"),
                   default_input_size=tuple(_get(t5, size_key)), num_pos=num_pos,
                   dropout_rate=float(vc.get("dropout_rate", 0.0)))


def _resampler(config: Mapping, name: str) -> ResamplerConfig:
  rc = _section(config, name)
  f = lambda key: _field(rc, name, key)  # noqa: E731
  if rc.get("resampler_type", "perceiver") != "perceiver":
    raise ConfigError(f"release config field `{name}.resampler_type` = {rc['resampler_type']!r} "
                      "is not supported (only 'perceiver')")
  if sorted(rc.get("xattention_index", [])) != list(range(f("num_layers"))):
    raise ConfigError(f"release config field `{name}.xattention_index` must list every layer "
                      "(self-attention perceiver layers crash in the release too)")
  return ResamplerConfig(emb_dim=f("emb_dim"), num_heads=f("num_heads"), head_dim=f("head_dim"),
                         num_layers=f("num_layers"), mlp_dim=f("mlp_dim"),
                         latents_size=f("latents_size"), max_frames=f("max_frames"),
                         qk_norm=bool(f("xattn_qk_norm")), scaled_cosine=bool(f("xattn_scaled_cosine")),
                         dropout_rate=float(rc.get("dropout_rate", 0.0)))


def _pick(section: Mapping, name: str, cls) -> Dict:
  out = {}
  for field in dataclasses.fields(cls):
    value = _field(section, name, field.name)
    out[field.name] = tuple(value) if isinstance(value, list) else value
  return out


def _image_vqgan(config: Mapping) -> ImageVQGANConfig:
  return ImageVQGANConfig(**_pick(_section(config, "image_vqgan"), "image_vqgan", ImageVQGANConfig))


def _audio_vqgan(config: Mapping) -> AudioVQGANConfig:
  return AudioVQGANConfig(**_pick(_section(config, "audio_vqgan"), "audio_vqgan", AudioVQGANConfig))


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------
def _flatten(tree: Mapping, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], object]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: Mapping[Tuple[str, ...], object]) -> Dict:
  tree: Dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def release_name(path: Tuple[str, ...]) -> str:
  """The release's state_dict key for one of our parameter paths."""
  head, rest = path[0], list(path[1:])
  if head.startswith("token_embedders_"):  # token_embedders_text/embedding
    return f"{head[len('token_embedders_'):]}_token_embedder.weight"
  for group in ("input_embedders_", "target_embedders_"):
    if head.startswith(group):
      head = f"{group[:-1]}.{head[len(group):]}"
  if rest and rest[-1] == "kernel":
    rest[-1] = "weight"
  return ".".join([head] + rest)


def _kernel_in_dims(path: Tuple[str, ...]) -> int:
  # Attention `out` kernels are [H, K, D] (two input dims); every other kernel has one input dim.
  return 2 if path[-2] == "out" else 1


def _release_shape(path: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if path[-1] != "kernel":
    return tuple(shape)
  n_in = _kernel_in_dims(path)
  return (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))


def release_to_params(release: Mapping[str, np.ndarray], abstract_params: Mapping
                      ) -> Tuple[Dict, List[str]]:
  """Our parameter tree (NumPy f32) from release tensors; also the release names left unused.

  `abstract_params` is our tree of shapes (e.g. from `jax.eval_shape`). `release` maps state_dict
  keys to arrays (anything indexable, so tensors can be read one at a time from disk).
  """
  flat, used = {}, set()
  for path, leaf in _flatten(abstract_params).items():
    name = release_name(path)
    if name not in release:
      raise CheckpointError(f"release tensor `{name}` is missing (needed for our parameter "
                            f"{'/'.join(path)})")
    tensor = np.asarray(release[name], dtype=np.float32)
    want = _release_shape(path, leaf.shape)
    if tuple(tensor.shape) != want:
      raise CheckpointError(f"release tensor `{name}` has shape {tuple(tensor.shape)}, expected "
                            f"{want} for our parameter {'/'.join(path)} {tuple(leaf.shape)}")
    flat[path] = tensor.T.reshape(leaf.shape) if path[-1] == "kernel" else tensor
    used.add(name)
  return _unflatten(flat), sorted(set(release) - used)


def params_to_release(params: Mapping) -> Dict[str, np.ndarray]:
  """The inverse of `release_to_params`: state_dict keys and torch layouts (for grads, export)."""
  out = {}
  for path, value in _flatten(params).items():
    value = np.asarray(value)
    if path[-1] == "kernel":
      n_in = _kernel_in_dims(path)
      value = value.reshape(int(np.prod(value.shape[:n_in])), -1).T
    out[release_name(path)] = value
  return out
