"""The release's config format (`config.json`, the golden files' `meta/config_json`) -> our config.

Parameters are translated in `unified_io.interop.params`.
"""

import dataclasses
import json
import logging
from typing import Dict, Iterable, List, Mapping

from unified_io.config import (AudioVQGANConfig, ConfigError, ImageVQGANConfig, ResamplerConfig,
                               TrunkConfig, UnifiedIOConfig, VitConfig)
from unified_io.modalities import Modality


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


# Our config fields the release's JSON does not have: the release fixes them in its code.
_RELEASE_FIXED = {"image_vqgan": {"norm_groups": 32}}  # torch GroupNorm(32, ...) everywhere


def _pick(section: Mapping, name: str, cls) -> Dict:
  out = dict(_RELEASE_FIXED.get(name, {}))
  for field in dataclasses.fields(cls):
    if field.name in out:
      continue
    value = _field(section, name, field.name)
    out[field.name] = tuple(value) if isinstance(value, list) else value
  return out


def _image_vqgan(config: Mapping) -> ImageVQGANConfig:
  return ImageVQGANConfig(**_pick(_section(config, "image_vqgan"), "image_vqgan", ImageVQGANConfig))


def _audio_vqgan(config: Mapping) -> AudioVQGANConfig:
  return AudioVQGANConfig(**_pick(_section(config, "audio_vqgan"), "audio_vqgan", AudioVQGANConfig))


# ------------------------------------------------------------------------------------------------
# The released models' configs (allenai/uio2-large|xl|xxl), in config.json form
# ------------------------------------------------------------------------------------------------
_RELEASE_TRUNKS = {
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816),
    "xl": dict(emb_dim=2048, num_heads=16, head_dim=128, mlp_dim=5120),
    "xxl": dict(emb_dim=3072, num_heads=24, head_dim=128, mlp_dim=8192),
}
# The resamplers: 768-wide in large; 1024-wide in xl and xxl, and scaled-cosine in xxl.
_RELEASE_RESAMPLERS = {
    "large": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048),
    "xl": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=4096),
    "xxl": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=4096, xattn_qk_norm=False,
                xattn_scaled_cosine=True),
}


def release_config(size: str) -> Dict:
  """The config.json of a released UIO2 model, for shape checks and conversion without the file."""
  if size not in _RELEASE_TRUNKS:
    raise ConfigError(f"unknown release size {size!r}; known: {sorted(_RELEASE_TRUNKS)}")
  vit = dict(patch_size=16, emb_dim=768, num_heads=12, num_layers=11, head_dim=64, mlp_dim=3072,
             mlp_activations=["gelu"])
  resampler = {**dict(resampler_type="perceiver", max_frames=8, num_layers=2,
                      xattention_index=[0, 1], mlp_activations=["gelu"], xattn_qk_norm=True,
                      xattn_scaled_cosine=False), **_RELEASE_RESAMPLERS[size]}
  vitvqgan = dict(vocab_size=8192, proj_dim=32, patch_size=[8, 8], output_channel=1,
                  default_input_size=[128, 256], **{
                      f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in dict(
                          hidden_size=512, num_layers=8, mlp_dim=2048, num_heads=8,
                          head_dim=64).items()})
  return {
      "t5_config": dict(
          vocab_size=33280, image_vocab_size=16512, audio_vocab_size=8320, num_encoder_layers=24,
          num_decoder_layers=24, mlp_activations=["silu", "linear"], dropout_rate=0.0,
          logits_via_embedding=True, decoder_xattention_internval=1, qk_norm=True,
          encoder_max_image_length=576, encoder_max_text_length=512,
          decoder_max_image_length=1024, decoder_max_text_length=512, text_pos_emb="llama_rope",
          default_image_size=[256, 256], default_image_vit_size=[384, 384],
          default_image_history_vit_size=[256, 256], default_audio_size=[256, 128],
          default_audio_vit_size=[256, 128], default_audio_history_vit_size=[256, 128],
          **_RELEASE_TRUNKS[size]),
      "image_vit_cfg": dict(vit, num_pos=197, default_input_size=[256, 256]),
      "audio_vit_cfg": dict(vit, default_input_size=[256, 128], transpose_input=True),
      "image_history_cfg": dict(resampler, latents_size=32),
      "audio_history_cfg": dict(resampler, latents_size=16),
      "image_vqgan": dict(embed_dim=4, n_embed=16384, double_z=False, z_channels=4, resolution=256,
                          in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=2,
                          attn_resolutions=[32], dropout=0.0, default_input_size=[256, 256],
                          patch_size=[8, 8]),
      "audio_vqgan": vitvqgan,
      "freeze_vit": True,
      "input_modalities": [m.value for m in Modality if m.in_release],
      "target_modalities": ["text", "image", "audio"],
  }
