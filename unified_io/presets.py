"""Named size presets and `make_config`, the gin entry point to a `UnifiedIOConfig`.

  make_config("tiny")                                   # text-only CI trunk
  make_config("large", input_modalities=("text", "image"), target_modalities=("text", "image"))

Components (ViTs, resamplers, VQ tokenizers) come as presets too: "tiny" (seconds on a CPU) or
"release" (the released model's, read from the release's own config in `unified_io.interop`).
"""

import dataclasses
from typing import Any, Dict, Optional

import gin

from unified_io.config import (INPUT_COMPONENTS, TARGET_COMPONENTS, AudioVQGANConfig,
                               CnnEncoderConfig, ConfigError,
                               ImageVQGANConfig, ResamplerConfig, SensorConfig, TrunkConfig,
                               UnifiedIOConfig, UniversalProjectionConfig, VitConfig, as_modalities,
                               require)
from unified_io.interop.release import config_from_release, release_config
from unified_io.modalities import Modality


# ------------------------------------------------------------------------------------------------
# Size presets (the README's architecture table). `tiny` is for CI: seconds on CPU, and head_dim != emb_dim so RoPE is on.
# ------------------------------------------------------------------------------------------------
SIZES = {
    "tiny": dict(emb_dim=128, num_heads=4, head_dim=32, num_encoder_layers=2, num_decoder_layers=2,
                 mlp_dim=256),
    "small": dict(emb_dim=512, num_heads=8, head_dim=64, num_encoder_layers=8, num_decoder_layers=8,
                  mlp_dim=1408),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, num_encoder_layers=12,
                 num_decoder_layers=12, mlp_dim=2048),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, num_encoder_layers=24,
                  num_decoder_layers=24, mlp_dim=2816),
    "xl": dict(emb_dim=2048, num_heads=16, head_dim=128, num_encoder_layers=24,
               num_decoder_layers=24, mlp_dim=5120),
    "xxl": dict(emb_dim=3072, num_heads=24, head_dim=128, num_encoder_layers=24,
                num_decoder_layers=24, mlp_dim=8192),
}


def trunk_config(size: str, **overrides) -> TrunkConfig:
  """The trunk of a named size preset, with any field overridden."""
  if size not in SIZES:
    raise ConfigError(f"config field `size`: unknown size {size!r}; known: {list(SIZES)}")
  known = {f.name for f in dataclasses.fields(TrunkConfig)}
  for name in overrides:
    require(name in known, name, f"is not a TrunkConfig field; known: {sorted(known)}")
  return TrunkConfig(**{**SIZES[size], **overrides})


def tiny_components() -> Dict[str, Any]:
  """Small ViTs, resamplers and VQ tokenizers (the sizes of the reference's tiny release config):
  128 px images in 16 px patches (8 x 8), 128 x 64 spectrograms, 4 history frames, 16 x 16 image
  codes from a 256-entry codebook, 8 x 16 audio codes. Seconds per step on a CPU."""
  vit = dict(emb_dim=128, num_heads=2, head_dim=64, num_layers=2, mlp_dim=256, patch_size=16)
  resampler = dict(emb_dim=128, num_heads=2, head_dim=64, num_layers=2, mlp_dim=256, max_frames=4)
  return dict(
      image_vit=VitConfig(**vit, default_input_size=(128, 128), num_pos=65),
      audio_vit=VitConfig(**vit, default_input_size=(128, 64), num_pos=514),
      image_history=ResamplerConfig(**resampler, latents_size=8, qk_norm=True, scaled_cosine=False),
      audio_history=ResamplerConfig(**resampler, latents_size=4, qk_norm=False, scaled_cosine=True),
      # No residual blocks beside the middle ones in the encoder, one per level in the decoder
      # (num_res_blocks=0): half the full-resolution convolutions, which is what a training step
      # costs on a CPU. 8 norm groups of 4 channels, not the release's 32 of 1: an instance norm
      # erases each channel's mean, and with it a flat background's colour.
      image_vqgan=ImageVQGANConfig(embed_dim=4, n_embed=256, z_channels=4, resolution=128, ch=32,
                                   ch_mult=(1, 1, 2, 2), num_res_blocks=0, attn_resolutions=(16,),
                                   default_input_size=(128, 128), patch_size=(8, 8),
                                   norm_groups=8),
      audio_vqgan=AudioVQGANConfig(
          vocab_size=256, proj_dim=32, encoder_hidden_size=128, encoder_num_layers=2,
          encoder_mlp_dim=256, encoder_num_heads=2, encoder_head_dim=64, decoder_hidden_size=128,
          decoder_num_layers=2, decoder_mlp_dim=256, decoder_num_heads=2, decoder_head_dim=64,
          default_input_size=(64, 128), patch_size=(8, 8)),
      image_history_input_size=(128, 128), audio_history_input_size=(128, 64),
      # 256 samples of 6 channels in 16 tokens: 16 of the image ViT's 64 grid rows.
      sensor=SensorConfig())


def release_components(size: str) -> Dict[str, Any]:
  """The released model's ViTs, resamplers and VQ tokenizers (large/xl/xxl share them)."""
  cfg = config_from_release(release_config(size if size in ("large", "xl", "xxl") else "large"))
  names = ("image_vit", "audio_vit", "image_history", "audio_history", "image_vqgan", "audio_vqgan",
           "image_history_input_size", "audio_history_input_size")
  # The release has no sensor input: a model reading one names its SensorConfig (make_config.sensor).
  return {**{name: getattr(cfg, name) for name in names}, "sensor": None}


COMPONENT_PRESETS = {"tiny": lambda size: tiny_components(), "release": release_components}


def _round_up(n: int, multiple: int = 128) -> int:
  return -(-n // multiple) * multiple


def _fit_trunk_to_components(components: Dict[str, Any], overrides: Dict[str, Any]
                             ) -> Dict[str, Any]:
  """Trunk fields the components fix (unless overridden): target vocabularies (codes + 2, padded
  to 128 as the release pads 16386 -> 16512) and the image RoPE lengths of the 4/3-style factor."""
  fitted = {}
  if components.get("image_vqgan") is not None:
    vq = components["image_vqgan"]
    fitted["image_vocab_size"] = _round_up(vq.n_embed + 2)
    fitted["decoder_max_image_length"] = vq.grid[0] * vq.grid[1]
  if components.get("audio_vqgan") is not None:
    fitted["audio_vocab_size"] = _round_up(components["audio_vqgan"].vocab_size + 2)
  if components.get("image_vit") is not None:
    h, w = components["image_vit"].grid
    fitted["encoder_max_image_length"] = h * w
  return {**fitted, **overrides}


# Registered, not decorated: Python calls are untouched, and a gin-built config is this very class
# (so it compares equal to one rebuilt from a run's saved config).
gin.register(UniversalProjectionConfig)
gin.register(SensorConfig)
gin.register(CnnEncoderConfig)


@gin.configurable
def make_config(size: str = "tiny", input_modalities=("text",), target_modalities=("text",),
                dynamic_masking: bool = False, freeze_vit: bool = True,
                pack_pairs: bool = False, packed_encoder_length: Optional[int] = None,
                packed_decoder_length: Optional[int] = None, components: Optional[str] = None,
                input_projection: Optional[UniversalProjectionConfig] = None,
                sensor: Optional[SensorConfig] = None,
                cnn_encoder: Optional[CnnEncoderConfig] = None, **trunk_overrides
                ) -> UnifiedIOConfig:
  """The gin entry point: a size preset, the modalities, model switches and trunk overrides.

  `components` ("tiny" or "release"; default "release" for large/xl/xxl, else "tiny") supplies
  the ViTs, resamplers and VQ tokenizers the chosen modalities need, and fits the trunk's target
  vocabularies and image RoPE lengths to them (explicit trunk overrides win).
  `input_projection`: OneLLM's universal projection for the ViT-read inputs, from gin as
  `make_config.input_projection = @UniversalProjectionConfig()` (None = the release's linear one).
  `sensor`: the sensor input's SensorConfig when "sensor" is an input modality (default: the
  component preset's; the tiny one has `SensorConfig()`, the release none).
  `cnn_encoder`: UnIVAL's light CNN encoders in place of the ViTs, from gin as
  `make_config.cnn_encoder = @CnnEncoderConfig()` (None = the ViTs; models/tiny_multimodal_cnn.gin).
  """
  inputs = as_modalities(input_modalities, "input_modalities")
  targets = as_modalities(target_modalities, "target_modalities")
  chosen: Dict[str, Any] = {}
  if any(m != Modality.TEXT for m in inputs + targets):
    preset = components or ("release" if size in ("large", "xl", "xxl") else "tiny")
    if preset not in COMPONENT_PRESETS:
      raise ConfigError(f"config field `components`: unknown preset {preset!r}; "
                        f"known: {sorted(COMPONENT_PRESETS)}")
    available = COMPONENT_PRESETS[preset](size)
    needed = {c for m in inputs for c in INPUT_COMPONENTS[m]}
    # (a modality that cannot be a target is refused by UnifiedIOConfig, naming the field)
    needed |= {c for m in targets for c in TARGET_COMPONENTS.get(m, ())}
    chosen = {name: available[name] for name in needed}
    chosen["image_history_input_size"] = available["image_history_input_size"]
    chosen["audio_history_input_size"] = available["audio_history_input_size"]
    trunk_overrides = _fit_trunk_to_components(chosen, trunk_overrides)
  if sensor is not None:
    chosen["sensor"] = sensor
  return UnifiedIOConfig(trunk=trunk_config(size, **trunk_overrides),
                         input_modalities=tuple(input_modalities),
                         target_modalities=tuple(target_modalities),
                         dynamic_masking=dynamic_masking, freeze_vit=freeze_vit,
                         pack_pairs=pack_pairs, packed_encoder_length=packed_encoder_length,
                         packed_decoder_length=packed_decoder_length,
                         input_projection=input_projection, cnn_encoder=cnn_encoder,
                         **chosen)
