"""Frozen configuration dataclasses (the size presets and `make_config` are in presets.py).

One dataclass per network component, passed whole to the module that builds it. Derived values are
properties. Gin binds `UnifiedIOConfig` (through `make_config`) and the size presets, never inner
layers. Every field is validated at construction, so a config that cannot work fails before any
array is allocated, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Optional, Tuple

import jax.numpy as jnp

from unified_io.modalities import Modality


class ConfigError(ValueError):
  """A configuration field has a value the model cannot be built with."""


# Activation / parameter dtype names (config fields, `load_run(dtype=)`, the memory plan).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def require(ok: bool, field: str, message: str) -> None:
  """Raises ConfigError naming `field` unless `ok`."""
  if not ok:
    raise ConfigError(f"config field `{field}`: {message}")


def _as_member(enum_cls, value, field: str, what: str):
  """`value` (a member of `enum_cls` or its string value) as the member; else a ConfigError."""
  try:
    return enum_cls(value)
  except ValueError:
    raise ConfigError(f"config field `{field}`: unknown {what} {value!r}; "
                      f"known: {[m.value for m in enum_cls]}") from None


class RematPolicy(str, enum.Enum):
  """What a rematerialised layer keeps for its backward pass (unified_io/network/trunk.py maps
  each to a `jax.checkpoint_policies` function); everything else is recomputed."""

  NONE = "none"  # no rematerialisation
  FULL = "full"  # nothing: only each layer's inputs (jax's nothing_saveable)
  DOTS = "dots"  # every matmul output (checkpoint_dots)
  # Matmul outputs without batch dimensions: the projections, not attention scores
  # (dots_with_no_batch_dims_saveable).
  DOTS_NO_BATCH = "dots_no_batch"


class AttentionImpl(str, enum.Enum):
  """Which implementation computes attention (`network/layers/backends.py` resolves AUTO and
  checks that the choice runs on this backend; docs/backends.md has the table)."""

  AUTO = "auto"  # the backend's best: CPU -> CPU; GPU -> CUDNN or XLA; TPU -> SPLASH or XLA
  XLA = "xla"  # the plain jnp formulation, plain autodiff (what XLA fuses on GPU and TPU)
  CPU = "cpu"  # hand-written VJPs tuned for XLA:CPU (layers/dot_product.py)
  CUDNN = "cudnn"  # jax.nn.dot_product_attention(implementation="cudnn"); bf16/fp16 only
  SPLASH = "splash"  # the TPU Pallas splash-attention kernel


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
  """The encoder-decoder transformer shared by every modality.

  Field names follow the release's `t5_config` where one exists. The token vocabularies live here
  because the output heads are tied to the token embeddings.
  """

  emb_dim: int = 256
  num_heads: int = 4
  head_dim: int = 64
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  mlp_dim: int = 512
  text_vocab_size: int = 33280
  image_vocab_size: int = 16512
  audio_vocab_size: int = 8320
  dropout_rate: float = 0.0
  # Longest 1D RoPE table (the release's `encoder_max_text_length` / `decoder_max_text_length`).
  max_text_length: int = 512
  # The release scales 2D RoPE coordinates of image and audio inputs by
  # sqrt(decoder_max_image_length / encoder_max_image_length) (4/3 in the real model).
  encoder_max_image_length: int = 576
  decoder_max_image_length: int = 1024
  qk_norm: bool = True
  # The release silently turns RoPE off when head_dim == emb_dim; the converter sets this to False
  # for such configs so their numbers still match.
  use_rope: bool = True
  rope_base: float = 10000.0
  norm_eps: float = 1e-6
  z_loss: float = 1e-4
  dtype: str = "float32"  # activation dtype; parameters are always float32
  # Rematerialisation of each layer in the backward pass (memory for compute): what a layer keeps.
  # A `RematPolicy` or its value ("none", "full", "dots", "dots_no_batch").
  remat_policy: RematPolicy = RematPolicy.NONE
  # Run the encoder and decoder layers under `nn.scan`: one compiled layer body, parameters (and
  # decoding caches) stacked on a leading "layers" axis (`unified_io.network.layer_stacking` converts).
  scan_layers: bool = False
  # How attention runs: an `AttentionImpl` or its value. "auto" picks per backend when the model
  # is traced: the CPU-tuned custom VJPs on CPU; cuDNN flash attention on GPU (bf16/fp16, head_dim
  # <= 128 and a multiple of 8, even lengths, no attention dropout; else "xla"); the splash kernel
  # on TPU (lengths multiples of 128, no attention dropout; else "xla"). cuDNN takes q and k in the
  # activation dtype, the one numerical difference from the release's float32 logits. (SwiGLU and
  # RMSNorm follow the backend alone: their custom VJPs on CPU only.) See docs/backends.md.
  attention_impl: AttentionImpl = AttentionImpl.AUTO

  def __post_init__(self):
    for name in ("emb_dim", "num_heads", "head_dim", "num_encoder_layers", "num_decoder_layers",
                 "mlp_dim", "text_vocab_size", "max_text_length"):
      value = getattr(self, name)
      require(isinstance(value, int) and value > 0, name, f"must be a positive int, got {value!r}")
    for name in ("image_vocab_size", "audio_vocab_size"):
      value = getattr(self, name)
      require(isinstance(value, int) and value >= 0, name, f"must be an int >= 0, got {value!r}")
    # 2D RoPE rotates hd/4 pairs with the row and hd/4 with the column.
    require(self.head_dim % 4 == 0, "head_dim",
             f"must be a multiple of 4 for 2D RoPE, got {self.head_dim}")
    require(self.dtype in DTYPES, "dtype", f"must be one of {sorted(DTYPES)}, got {self.dtype!r}")
    require(0.0 <= self.dropout_rate < 1.0, "dropout_rate",
             f"must be in [0, 1), got {self.dropout_rate}")
    require(self.encoder_max_image_length > 0 and self.decoder_max_image_length > 0,
             "encoder_max_image_length", "image lengths must be positive")
    object.__setattr__(self, "remat_policy",
                       _as_member(RematPolicy, self.remat_policy, "remat_policy", "policy"))
    require(isinstance(self.scan_layers, bool), "scan_layers",
             f"must be a bool, got {self.scan_layers!r}")
    impl = _as_member(AttentionImpl, self.attention_impl, "attention_impl", "implementation")
    object.__setattr__(self, "attention_impl", impl)
    require(self.dropout_rate == 0.0 or impl not in (AttentionImpl.CUDNN, AttentionImpl.SPLASH),
             "attention_impl", f"{impl.value!r} has no attention dropout (dropout_rate "
             f"{self.dropout_rate}); use 'auto', 'xla' or 'cpu'")

  @property
  def joined_heads_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def activation_dtype(self):
    return DTYPES[self.dtype]

  @property
  def image_input_rope_scale(self) -> float:
    return (self.decoder_max_image_length / self.encoder_max_image_length) ** 0.5

  def vocab_size(self, modality: Modality) -> int:
    return {Modality.TEXT: self.text_vocab_size, Modality.IMAGE: self.image_vocab_size,
            Modality.AUDIO: self.audio_vocab_size}[modality]


Size2 = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class VitConfig:
  """A ViT feature extractor: the image one (CLIP-style) or the audio one (AST-style).

  The stored position table has `num_pos` rows. Image: 1 + g*g (a class row, then the g x g grid
  it was trained at), resized when the input grid (`default_input_size` / `patch_size`) differs.
  Audio: the release's fixed 514 rows (class, distillation, then patches, indexed transposed).
  The last kept block and the output of block 1 are the features the embedders use.
  """

  emb_dim: int = 768
  num_heads: int = 12
  head_dim: int = 64
  num_layers: int = 11
  mlp_dim: int = 3072
  patch_size: int = 16
  default_input_size: Size2 = (384, 384)
  num_pos: int = 197
  dropout_rate: float = 0.0

  def __post_init__(self):
    for name in ("emb_dim", "num_heads", "head_dim", "num_layers", "mlp_dim", "patch_size",
                 "num_pos"):
      require(getattr(self, name) > 0, f"vit.{name}", "must be positive")
    require(self.num_layers >= 2, "vit.num_layers", "must be >= 2 (block 1 is a feature tap)")
    require(self.num_heads * self.head_dim == self.emb_dim, "vit.num_heads",
             f"num_heads * head_dim must equal emb_dim ({self.num_heads} * {self.head_dim} != "
             f"{self.emb_dim})")
    for side in self.default_input_size:
      require(side % self.patch_size == 0, "vit.default_input_size",
               f"{self.default_input_size} is not a multiple of patch_size {self.patch_size}")

  @property
  def grid(self) -> Size2:
    return (self.default_input_size[0] // self.patch_size,
            self.default_input_size[1] // self.patch_size)

  @property
  def patch_dim(self) -> int:
    """Values per channel of one flattened patch; times 3 for RGB image patches, 1 for audio."""
    return self.patch_size * self.patch_size


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  """The perceiver resampler that turns one frame's ViT features into `latents_size` latents."""

  emb_dim: int = 768
  num_heads: int = 12
  head_dim: int = 64
  num_layers: int = 2
  mlp_dim: int = 2048
  latents_size: int = 32
  max_frames: int = 8
  qk_norm: bool = True  # the release's `xattn_qk_norm`
  scaled_cosine: bool = False  # `xattn_scaled_cosine`: cos(q, k) * exp(min(scale, ln 100))
  dropout_rate: float = 0.0

  def __post_init__(self):
    for name in ("emb_dim", "num_heads", "head_dim", "num_layers", "mlp_dim", "latents_size",
                 "max_frames"):
      require(getattr(self, name) > 0, f"resampler.{name}", "must be positive")


@dataclasses.dataclass(frozen=True)
class ImageVQGANConfig:
  """The image target tokenizer: a taming-style conv VQGAN (the release's `image_vqgan`)."""

  embed_dim: int = 4
  n_embed: int = 16384
  z_channels: int = 4
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (32,)
  default_input_size: Size2 = (256, 256)
  patch_size: Size2 = (8, 8)
  # GroupNorm's groups (the release: 32). With one channel per group (32 channels) the norm is an
  # instance norm, which removes each channel's mean over the image: a flat background's colour
  # then cannot pass the encoder's or the decoder's last norm (`tokenizer_training`).
  norm_groups: int = 32

  def __post_init__(self):
    # Every level but the last halves the resolution: the patch size follows from ch_mult.
    downsample = 2 ** (len(self.ch_mult) - 1)
    require(tuple(self.patch_size) == (downsample, downsample), "image_vqgan.patch_size",
             f"{tuple(self.patch_size)} does not match ch_mult {tuple(self.ch_mult)} "
             f"(which downsamples by {downsample})")

  @property
  def grid(self) -> Size2:
    return (self.default_input_size[0] // self.patch_size[0],
            self.default_input_size[1] // self.patch_size[1])


@dataclasses.dataclass(frozen=True)
class AudioVQGANConfig:
  """The audio target tokenizer: a ViT-VQGAN over (mel, time) spectrograms (`audio_vqgan`)."""

  vocab_size: int = 8192
  proj_dim: int = 32
  encoder_hidden_size: int = 512
  encoder_num_layers: int = 8
  encoder_mlp_dim: int = 2048
  encoder_num_heads: int = 8
  encoder_head_dim: int = 64
  decoder_hidden_size: int = 512
  decoder_num_layers: int = 8
  decoder_mlp_dim: int = 2048
  decoder_num_heads: int = 8
  decoder_head_dim: int = 64
  default_input_size: Size2 = (128, 256)  # (mel, time) after the release's transpose
  patch_size: Size2 = (8, 8)
  output_channel: int = 1

  @property
  def grid(self) -> Size2:
    return (self.default_input_size[0] // self.patch_size[0],
            self.default_input_size[1] // self.patch_size[1])


@dataclasses.dataclass(frozen=True)
class SensorConfig:
  """An IMU-like 1-D sensor input (OneLLM style): `length` samples of `channels` values, read in
  chunks of `patch` samples. A learned 1-D conv (`kernel` samples wide, stride `patch`, SAME
  padding) turns the signal into length / patch tokens of the shared ViT's width, which the ViT's
  blocks read in place of its patch embedding (unified_io/network/embedders/sensor.py).

  Gin (`SensorConfig` is registered with gin in unified_io/presets.py; the tiny components carry
  the default one): `make_config.sensor = @SensorConfig()`, `SensorConfig.length = 512`.
  """

  length: int = 256  # time samples T
  channels: int = 6  # 3-axis accelerometer + 3-axis gyroscope
  patch: int = 16  # samples per token: N = length / patch tokens
  kernel: int = 32  # the conv tokenizer's width in samples
  vit: str = "image_vit"  # the shared ViT the tokens feed (the UnifiedIOConfig field)

  def __post_init__(self):
    for name in ("length", "channels", "patch", "kernel"):
      value = getattr(self, name)
      require(isinstance(value, int) and value > 0, f"sensor.{name}",
              f"must be a positive int, got {value!r}")
    require(self.length % self.patch == 0, "sensor.length",
            f"{self.length} is not a multiple of sensor.patch {self.patch}")
    # Only the CLIP-style image ViT reads embedded tokens (`ImageViT(..., embedded=True)`).
    require(self.vit == "image_vit", "sensor.vit", f"must be 'image_vit', got {self.vit!r}")

  @property
  def num_tokens(self) -> int:
    return self.length // self.patch

  @property
  def patch_dim(self) -> int:
    """Values of one chunk, (dt c)-flattened."""
    return self.patch * self.channels


class ProjectionExpert(str, enum.Enum):
  """What one expert of the universal projection (`UniversalProjectionConfig.expert`) is."""

  MLP = "mlp"  # Dense(W -> hidden) + GELU + Dense(hidden -> D), with biases (OneLLM's experts)
  LINEAR = "linear"  # a bias-free W -> D kernel, as the release's one projection


class ProjectionRouter(str, enum.Enum):
  """What the universal projection's soft router (`UniversalProjectionConfig.router`) reads."""

  MODALITY = "modality"  # a learned vector of K logits per modality
  MODALITY_AND_TOKEN = "modality_and_token"  # that vector plus a linear map of the token's features


def modality_subset(values, known, field: str) -> Tuple[Modality, ...]:
  """`values` (modality names) as a sorted, de-duplicated tuple of Modality, each one of `known`;
  a ConfigError naming `field` otherwise."""
  require(not isinstance(values, str), field,
          f"must be a tuple of modality names, got the string {values!r}")
  names = ", ".join(m.value for m in known)
  chosen = []
  for value in values:
    try:
      modality = Modality(value)
    except ValueError:
      modality = None
    require(modality in known, field, f"unknown modality {value!r}; known: {names}")
    chosen.append(modality)
  return tuple(sorted(set(chosen), key=Modality.order))


@dataclasses.dataclass(frozen=True)
class UniversalProjectionConfig:
  """OneLLM's universal projection module: the adapter from ViT-read features to the trunk.

  Replaces each served modality's own bias-free `projection` (image, audio) or `post_projection`
  (the histories' resampler latents) with ONE set of `num_experts` experts shared by every served
  modality, mixed per token by softmax weights from a router conditioned on the modality (and, for
  "modality_and_token", on the token's features). Features narrower than the widest served ones
  (the histories' resampler latents beside the image/audio ViT's two concatenated taps) are
  zero-padded on the right. See unified_io/network/embedders/projection.py.

  Gin (`UniversalProjectionConfig` is registered with gin in unified_io/presets.py):
    make_config.input_projection = @UniversalProjectionConfig()
    UniversalProjectionConfig.num_experts = 3
    UniversalProjectionConfig.router = "modality_and_token"
    UniversalProjectionConfig.modalities = ("image", "audio")
  """

  num_experts: int = 3
  expert: ProjectionExpert = ProjectionExpert.MLP
  # Hidden width of an "mlp" expert; 0 = twice the trunk's emb_dim.
  mlp_dim: int = 0
  router: ProjectionRouter = ProjectionRouter.MODALITY
  # The ViT-read input modalities that use it; empty = every ViT-read input modality of the model.
  modalities: Tuple[Modality, ...] = ()

  def __post_init__(self):
    require(isinstance(self.num_experts, int) and self.num_experts >= 1,
            "input_projection.num_experts", f"must be an int >= 1, got {self.num_experts!r}")
    object.__setattr__(self, "expert", _as_member(ProjectionExpert, self.expert,
                                                  "input_projection.expert", "expert"))
    object.__setattr__(self, "router", _as_member(ProjectionRouter, self.router,
                                                  "input_projection.router", "router"))
    require(isinstance(self.mlp_dim, int) and self.mlp_dim >= 0, "input_projection.mlp_dim",
            f"must be an int >= 0 (0 = twice the trunk's emb_dim), got {self.mlp_dim!r}")
    require(self.mlp_dim == 0 or self.expert == ProjectionExpert.MLP, "input_projection.mlp_dim",
            f"is set ({self.mlp_dim}) but the experts are {self.expert.value!r}, not 'mlp'")
    object.__setattr__(self, "modalities", modality_subset(
        self.modalities, [m for m in Modality if m.has_patches], "input_projection.modalities"))

  def hidden_dim(self, emb_dim: int) -> int:
    """The hidden width of an "mlp" expert projecting to a trunk of width `emb_dim`."""
    return self.mlp_dim or 2 * emb_dim


# The inputs a CNN encoder can read in place of their ViT, and the ViT (the UnifiedIOConfig field)
# whose patch size and grid their patches keep (the sensor has its own conv tokenizer).
CNN_MODALITIES = {Modality.IMAGE: "image_vit", Modality.IMAGE_HISTORY: "image_vit",
                  Modality.AUDIO: "audio_vit", Modality.AUDIO_HISTORY: "audio_vit"}


@dataclasses.dataclass(frozen=True)
class CnnEncoderConfig:
  """UnIVAL's light ResNet-style CNN encoders in place of the ViT feature extractors.

  Each served modality gets its own small CNN (not shared across modalities, unlike the ViTs), which
  reads the same patches its ViT would: the patches are put back on their grid, a stem conv and
  `len(widths)` residual stages (each halving the resolution, `blocks_per_stage` basic blocks,
  GroupNorm in `norm_groups` groups) bring the picture down to one cell per patch, and the cell of
  each patch's position is projected to the ViT's width: the same features, masks and RoPE rows
  go on to the projection (or the resampler of a history) as with the ViT. The CNN is trained
  (`freeze_vit` concerns the ViTs only). See unified_io/network/embedders/cnn.py.

  Gin (`CnnEncoderConfig` is registered with gin in unified_io/presets.py):
    make_config.cnn_encoder = @CnnEncoderConfig()
    CnnEncoderConfig.widths = (32, 64, 128)
    CnnEncoderConfig.modalities = ("image", "image_history")
  """

  # Channels of each residual stage; the stem has widths[0]. The stem's stride is
  # patch_size / 2^len(widths), so the patch size of a served modality's ViT must be a multiple
  # of 2^len(widths) (16 px patches: at most 4 stages).
  widths: Tuple[int, ...] = (32, 64, 128)
  blocks_per_stage: int = 1
  norm_groups: int = 8
  # The inputs read through a CNN; empty = every input of the model among image, image_history,
  # audio and audio_history.
  modalities: Tuple[Modality, ...] = ()

  def __post_init__(self):
    require(not isinstance(self.widths, (str, int)) and len(self.widths) > 0,
            "cnn_encoder.widths", f"must be a non-empty tuple of ints, got {self.widths!r}")
    object.__setattr__(self, "widths", tuple(self.widths))
    for width in self.widths:
      require(isinstance(width, int) and width > 0, "cnn_encoder.widths",
              f"must be positive ints, got {self.widths!r}")
    require(isinstance(self.norm_groups, int) and self.norm_groups > 0, "cnn_encoder.norm_groups",
            f"must be a positive int, got {self.norm_groups!r}")
    require(all(w % self.norm_groups == 0 for w in self.widths), "cnn_encoder.widths",
            f"{self.widths} must all be multiples of norm_groups {self.norm_groups}")
    require(isinstance(self.blocks_per_stage, int) and self.blocks_per_stage >= 1,
            "cnn_encoder.blocks_per_stage", f"must be an int >= 1, got {self.blocks_per_stage!r}")
    object.__setattr__(self, "modalities", modality_subset(
        self.modalities, CNN_MODALITIES, "cnn_encoder.modalities"))

  @property
  def downsampling(self) -> int:
    """The stages' total stride, 2^len(widths)."""
    return 2 ** len(self.widths)

  def stem_stride(self, patch_size: int) -> int:
    """The stem conv's stride for `patch_size` px patches: stem x stages = one cell per patch."""
    return patch_size // self.downsampling


@dataclasses.dataclass(frozen=True)
class UnifiedIOConfig:
  """The whole model: the trunk, which modalities it reads and writes, and their components.

  A component is needed only when a modality that uses it is present: image_vit for image and
  image_history inputs, audio_vit for audio and audio_history, the resamplers for the histories,
  the VQ tokenizers for image and audio targets. Sizes are (height, width) in pixels or
  spectrogram bins, as the release's `default_*_size` fields.
  """

  trunk: TrunkConfig = TrunkConfig()
  input_modalities: Tuple[Modality, ...] = (Modality.TEXT,)
  target_modalities: Tuple[Modality, ...] = (Modality.TEXT,)
  image_vit: Optional[VitConfig] = None
  audio_vit: Optional[VitConfig] = None
  image_history: Optional[ResamplerConfig] = None
  audio_history: Optional[ResamplerConfig] = None
  image_vqgan: Optional[ImageVQGANConfig] = None
  audio_vqgan: Optional[AudioVQGANConfig] = None
  image_history_input_size: Size2 = (256, 256)
  audio_history_input_size: Size2 = (256, 128)
  freeze_vit: bool = True  # stop gradients into the ViTs (history ViTs are always frozen)
  # The paper's autoregressive dynamic masking and row/column/conv patterns for image and audio
  # targets. The release computes them but never applies them: off = the release's numbers.
  dynamic_masking: bool = False
  # Pair packing (unified_io/network/packing.py): examples 2i and 2i+1 of a batch share one encoder row and
  # one decoder row of these lengths. None = as long as one unpacked row, so a packed batch runs the
  # trunk on half the rows of the same length (a pair whose tokens do not fit loses the tail,
  # counted in packing/*_dropped; bench/packing.py shows the fill and drops for a mixture).
  pack_pairs: bool = False
  packed_encoder_length: Optional[int] = None
  packed_decoder_length: Optional[int] = None
  # OneLLM's universal projection in place of the ViT-read inputs' own linear projections; None =
  # the release's per-modality linear projection (unified_io/network/embedders/projection.py).
  input_projection: Optional[UniversalProjectionConfig] = None
  # The IMU-like sensor input (required when sensor is an input modality).
  sensor: Optional[SensorConfig] = None
  # UnIVAL's light CNN encoders in place of the ViTs for some inputs; None = the ViTs
  # (unified_io/network/embedders/cnn.py).
  cnn_encoder: Optional[CnnEncoderConfig] = None

  def __post_init__(self):
    object.__setattr__(self, "input_modalities", as_modalities(self.input_modalities, "input_modalities"))
    object.__setattr__(self, "target_modalities", as_modalities(self.target_modalities, "target_modalities"))
    require(bool(self.input_modalities), "input_modalities", "needs at least one modality")
    require(bool(self.target_modalities), "target_modalities", "needs at least one modality")
    for m in self.target_modalities:
      require(m.can_be_target, "target_modalities", f"{m.value} cannot be a target")
      require(self.trunk.vocab_size(m) > 0, f"trunk.{m.value}_vocab_size",
               f"must be > 0 when {m.value} is a target")
    for m in self.input_modalities:
      for component in INPUT_COMPONENTS[m]:
        require(getattr(self, component) is not None, component,
                 f"is required when {m.value} is an input modality")
    if Modality.SENSOR in self.input_modalities:
      require(isinstance(self.sensor, SensorConfig), "sensor",
              f"must be a SensorConfig when sensor is an input modality, got {self.sensor!r}")
      vit = getattr(self, self.sensor.vit)
      require(self.sensor.num_tokens <= vit.grid[0] * vit.grid[1], "sensor.length",
              f"{self.sensor.num_tokens} tokens (length / patch) exceed the {vit.grid} grid of "
              f"{self.sensor.vit}")
    for m in self.target_modalities:
      for component in TARGET_COMPONENTS[m]:
        require(getattr(self, component) is not None, component,
                 f"is required when {m.value} is a target modality")
    for name in ("packed_encoder_length", "packed_decoder_length"):
      value = getattr(self, name)
      require(value is None or (isinstance(value, int) and value > 0), name,
               f"must be None or a positive int, got {value!r}")
      require(value is None or self.pack_pairs, name, "is set but `pack_pairs` is off")
    if self.input_projection is not None:
      require(isinstance(self.input_projection, UniversalProjectionConfig), "input_projection",
              f"must be a UniversalProjectionConfig or None, got {self.input_projection!r}")
      read = [m for m in self.input_modalities if m.has_patches]
      require(bool(read), "input_projection",
              "is set but the model reads no ViT input (image, audio, a history or sensor)")
      absent = [m.value for m in self.input_projection.modalities if m not in read]
      require(not absent, "input_projection.modalities",
              f"{absent} are not input modalities of this model; its ViT-read inputs are "
              f"{[m.value for m in read]}")

    if self.cnn_encoder is not None:
      self._check_cnn_encoder()

  def _check_cnn_encoder(self) -> None:
    cnn = self.cnn_encoder
    require(isinstance(cnn, CnnEncoderConfig), "cnn_encoder",
            f"must be a CnnEncoderConfig or None, got {cnn!r}")
    read = [m for m in self.input_modalities if m in CNN_MODALITIES]
    require(bool(read), "cnn_encoder",
            "is set but the model reads none of image, image_history, audio, audio_history")
    absent = [m.value for m in cnn.modalities if m not in read]
    require(not absent, "cnn_encoder.modalities",
            f"{absent} are not input modalities of this model; its CNN-readable inputs are "
            f"{[m.value for m in read]}")
    for m in self.cnn_modalities:
      vit = CNN_MODALITIES[m]
      patch = getattr(self, vit).patch_size
      require(patch % cnn.downsampling == 0, "cnn_encoder.widths",
              f"{len(cnn.widths)} stages downsample by {cnn.downsampling}, which does not divide "
              f"the {patch} px patches of {vit} ({m.value}); use at most "
              f"{(patch & -patch).bit_length() - 1} stages")

  @property
  def cnn_modalities(self) -> Tuple[Modality, ...]:
    """The input modalities read through a CNN encoder (empty without one)."""
    if self.cnn_encoder is None:
      return ()
    return (self.cnn_encoder.modalities
            or tuple(m for m in self.input_modalities if m in CNN_MODALITIES))

  @property
  def projected_modalities(self) -> Tuple[Modality, ...]:
    """The input modalities read through the universal projection (empty without one)."""
    if self.input_projection is None:
      return ()
    return (self.input_projection.modalities
            or tuple(m for m in self.input_modalities if m.has_patches))


INPUT_COMPONENTS = {
    Modality.TEXT: (), Modality.IMAGE: ("image_vit",), Modality.AUDIO: ("audio_vit",),
    Modality.IMAGE_HISTORY: ("image_vit", "image_history"),
    Modality.AUDIO_HISTORY: ("audio_vit", "audio_history"),
    Modality.SENSOR: ("sensor", "image_vit"),  # (SensorConfig.vit, which can only be image_vit)
}
TARGET_COMPONENTS = {Modality.TEXT: (), Modality.IMAGE: ("image_vqgan",),
                      Modality.AUDIO: ("audio_vqgan",)}


def as_modalities(values, field: str) -> Tuple[Modality, ...]:
  out = [_as_member(Modality, v, field, "modality") for v in values]
  # The release concatenates parts in a fixed order; keep it whatever order the user wrote.
  return tuple(sorted(set(out), key=Modality.order))


# ------------------------------------------------------------------------------------------------
# As data: a run's model configuration is saved as JSON beside its checkpoints.
# ------------------------------------------------------------------------------------------------
def to_dict(cfg) -> dict:
  """A config dataclass -> plain JSON-able data (nested dicts, lists, strings for enums)."""
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, enum.Enum):
    return cfg.value
  if isinstance(cfg, (tuple, list)):
    return [to_dict(v) for v in cfg]
  return cfg


def from_dict(cls, data: dict):
  """The inverse of `to_dict` for the dataclass `cls` (e.g. `UnifiedIOConfig`); fields missing
  from `data` keep their defaults, unknown ones are refused naming the field."""
  hints = typing.get_type_hints(cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  require(not unknown, f"{cls.__name__}.{unknown[0] if unknown else ''}",
          f"is not a field; known: {sorted(known)}")
  return cls(**{name: _from_data(hints[name], value) for name, value in data.items()})


def _from_data(hint, value):
  if value is None:
    return None
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is typing.Union:
    return _from_data(next(a for a in args if a is not type(None)), value)
  if dataclasses.is_dataclass(hint):
    return from_dict(hint, value)
  if isinstance(hint, type) and issubclass(hint, enum.Enum):
    return hint(value)
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_from_data(args[0], v) for v in value)
    return tuple(_from_data(a, v) for a, v in zip(args, value)) if args else tuple(value)
  return value
