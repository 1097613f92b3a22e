"""The pre-trained ViT feature extractors: the image one (CLIP-style), the audio one (AST-style).

Axis legend: B batch, N patches, P patch_dim (flattened patch), V vit embed, H heads, K head_dim,
F vit mlp, S and T sequence (queries, keys) = prefix tokens (class / distillation) + N,
R position-table rows (num_pos), G patches of the (h, w) grid.

Both are called `vit(x [B, N, P], mask [B, N], pos_ids [B, N], deterministic)` and return
`(last [B, N, V], block1 [B, N, V])`: the last block's output and block index 1's output, without
the prefix rows. There is no final norm. Everything runs in float32, as in the release.

Image (CLIP): linear patch embedding without bias; class token; `positional_embedding` [1 + g*g, V]
(row 0 for the class token, rows 1: a g x g grid indexed by pos_ids); pre-LN; blocks with LayerNorm
eps 1e-5 and exact (erf) GELU.
Audio (AST): linear with bias; class and distillation tokens; `positional_embedding` [num_pos, V]
(rows 0, 1 for them, rows 2: indexed TRANSPOSED, pos_t = (p % w) * h + p // w); no pre-LN; blocks
with LayerNorm eps 1e-6 and tanh GELU.

Blocks: x += attn(ln_1(x)); x += fc2(gelu(fc1(ln_2(x)))). Attention has biases and scale K^-0.5;
a patch attends to a patch only if both are valid (prefix tokens always are); masked logits are
replaced by -1e10, as the release's -1e10 bias does in float32, so a padded query row becomes a
uniform average over all keys (deterministic, matches the release on every row).

Parameter names are the release's (`transformer/resblocks_0/attn/query_in_proj/kernel` is
`transformer.resblocks.0.attn.query_in_proj_weight`), so `interop.params` finds them.
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import ConfigError, VitConfig
from unified_io.network.layers.attention import MASKED_LOGIT

Grid = Tuple[int, int]

# Logical axis names of ViT parameters (the partitioning rules table maps them).
EMBED = "vit_embed"  # V
JOINED_KV = "vit_joined_kv"  # H * K, heads-major: splitting it splits heads
MLP = "vit_mlp"  # F
PATCH = "vit_patch"  # P, rows of the patch embedding
POS = "vit_pos"  # rows of the position table

_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def validate_patches(what: str, x_bnp, mask_bn, pos_ids_bn, patch_dim: int, grid: Grid) -> None:
  """Trace-time shape checks of one patch batch; errors name `what` and the expected shapes."""
  max_patches = grid[0] * grid[1]
  expected = f"input [B, N, {patch_dim}], mask [B, N], pos_ids [B, N] with N <= {max_patches}"
  if x_bnp.ndim != 3 or x_bnp.shape[-1] != patch_dim:
    raise ValueError(f"{what}: input has shape {tuple(x_bnp.shape)}, expected {expected} "
                     f"(patch_dim {patch_dim})")
  batch, n = x_bnp.shape[:2]
  if n > max_patches:
    raise ValueError(f"{what}: input has {n} patches, more than the {grid[0]}x{grid[1]} grid's "
                     f"{max_patches}; expected {expected}")
  for name, array in (("mask", mask_bn), ("pos_ids", pos_ids_bn)):
    if tuple(array.shape) != (batch, n):
      raise ValueError(f"{what}: {name} has shape {tuple(array.shape)}, expected [B, N] = "
                       f"{(batch, n)} like the input; expected {expected}")


class Linear(nn.Module):
  """x [..., I] @ kernel [I, O] (+ bias [O]), float32; `axes` names the kernel's (I, O)."""

  features: int
  axes: Tuple[str, str]
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(_kernel_init, self.axes),
                        (x.shape[-1], self.features), jnp.float32)
    y = x @ kernel
    if self.use_bias:
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                         (self.features,), jnp.float32)
    return y


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # Two-pass variance, like torch's LayerNorm (the fast E[x^2] - E[x]^2 loses digits).
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, use_fast_variance=False,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
                      name=name)


class VitAttention(nn.Module):
  """Self-attention with biases; `mask` [B, 1, S, T] boolean (True = may attend)."""

  cfg: VitConfig

  @nn.compact
  def __call__(self, x_bsv: jax.Array, mask_b1st: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    batch, length, _ = x_bsv.shape
    heads = lambda y: y.reshape(batch, length, cfg.num_heads, cfg.head_dim)  # noqa: E731
    q_bshk = heads(Linear(cfg.emb_dim, (EMBED, JOINED_KV), name="query_in_proj")(x_bsv))
    k_bshk = heads(Linear(cfg.emb_dim, (EMBED, JOINED_KV), name="key_in_proj")(x_bsv))
    v_bshk = heads(Linear(cfg.emb_dim, (EMBED, JOINED_KV), name="value_in_proj")(x_bsv))

    logits_bhst = jnp.einsum("BSHK,BTHK->BHST", q_bshk * cfg.head_dim ** -0.5, k_bshk)
    logits_bhst = jnp.where(mask_b1st, logits_bhst, MASKED_LOGIT)
    weights_bhst = jax.nn.softmax(logits_bhst, axis=-1)
    # The release drops whole key columns, shared by every query (broadcast over queries).
    weights_bhst = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        weights_bhst, deterministic=deterministic)
    out_bsv = jnp.einsum("BHST,BTHK->BSHK", weights_bhst, v_bshk).reshape(batch, length, -1)
    return Linear(cfg.emb_dim, (JOINED_KV, EMBED), name="out_proj")(out_bsv)


class VitMlp(nn.Module):
  """fc2(gelu(fc1(x))) with biases; GELU exact (image) or tanh-approximated (audio)."""

  cfg: VitConfig
  tanh_gelu: bool

  @nn.compact
  def __call__(self, x_bsv: jax.Array) -> jax.Array:
    h_bsf = Linear(self.cfg.mlp_dim, (EMBED, MLP), name="fc1")(x_bsv)
    h_bsf = jax.nn.gelu(h_bsf, approximate=self.tanh_gelu)
    return Linear(self.cfg.emb_dim, (MLP, EMBED), name="fc2")(h_bsf)


class VitBlock(nn.Module):
  """Pre-LN residual block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

  cfg: VitConfig
  ln_eps: float
  tanh_gelu: bool

  @nn.compact
  def __call__(self, x_bsv: jax.Array, mask_b1st: jax.Array, deterministic: bool) -> jax.Array:
    h_bsv = _layer_norm(self.ln_eps, "ln_1")(x_bsv)
    x_bsv = x_bsv + VitAttention(self.cfg, name="attn")(h_bsv, mask_b1st, deterministic)
    h_bsv = _layer_norm(self.ln_eps, "ln_2")(x_bsv)
    return x_bsv + VitMlp(self.cfg, self.tanh_gelu, name="mlp")(h_bsv)


class VitTransformer(nn.Module):
  """The block stack; returns (last block's output, block 1's output), prefix rows included."""

  cfg: VitConfig
  ln_eps: float
  tanh_gelu: bool

  @nn.compact
  def __call__(self, x_bsv: jax.Array, valid_bs: jax.Array, deterministic: bool
               ) -> Tuple[jax.Array, jax.Array]:
    mask_b1st = (valid_bs[:, None, :, None] & valid_bs[:, None, None, :])
    outputs = []
    for i in range(self.cfg.num_layers):
      x_bsv = VitBlock(self.cfg, self.ln_eps, self.tanh_gelu, name=f"resblocks_{i}")(
          x_bsv, mask_b1st, deterministic)
      outputs.append(x_bsv)
    return x_bsv, outputs[1]


def _with_prefix_valid(mask_bn: jax.Array, n_prefix: int) -> jax.Array:
  """[B, S] boolean validity: the class (and distillation) tokens are always valid."""
  prefix_bp = jnp.ones((mask_bn.shape[0], n_prefix), bool)
  return jnp.concatenate([prefix_bp, mask_bn > 0], axis=1)


def _prefix_token(module: nn.Module, name: str, dim: int, stddev: float) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(stddev), (EMBED,)),
                      (dim,), jnp.float32)


def _position_table(module: nn.Module, cfg: VitConfig) -> jax.Array:
  return module.param(
      "positional_embedding",
      nn.with_logical_partitioning(nn.initializers.normal(cfg.emb_dim ** -0.5), (POS, EMBED)),
      (cfg.num_pos, cfg.emb_dim), jnp.float32)


def resize_positions(table_ggv: jax.Array, grid: Grid) -> jax.Array:
  """A [g, g, V] position grid resized to [h, w, V], as the original JAX release does.

  `jax.image.resize(..., "bicubic")`: Keys cubic, a = -0.5, antialiased when shrinking, edge weights
  renormalised. The real models resize (14x14 -> 24x24 for image input, -> 16x16 for history); the
  tiny golden config never does. The reference README expects the PyTorch port's
  `F.interpolate(bicubic, antialias=True)` to differ (a = -0.75), but torch's antialiased path uses
  a = -0.5 as well: on the golden file's `aux/vit_pos_interp` (6 -> 9 and 6 -> 4) this function
  agrees with it to ~1e-6 (tests/test_vit_encoders.py).
  """
  if tuple(table_ggv.shape[:2]) == tuple(grid):
    return table_ggv
  return jax.image.resize(table_ggv, (grid[0], grid[1], table_ggv.shape[-1]), "bicubic")


class _ViT(nn.Module):
  """What the two ViTs share: the config, and the flattened patch size from the channel count."""

  cfg: VitConfig
  CHANNELS = 1
  LN_EPS = 1e-6

  @property
  def patch_dim(self) -> int:
    return self.cfg.patch_size * self.cfg.patch_size * self.CHANNELS


class ImageViT(_ViT):
  """CLIP-style image ViT (see the module docstring). Input patches are (dh dw c)-flattened."""

  CHANNELS = 3
  LN_EPS = 1e-5

  @nn.compact
  def __call__(self, x_bnp: jax.Array, mask_bn: jax.Array, pos_ids_bn: jax.Array,
               deterministic: bool = True, grid: Optional[Grid] = None, embedded: bool = False
               ) -> Tuple[jax.Array, jax.Array]:
    """`grid`: the patch grid pos_ids index (default cfg.grid); the history path passes its own.
    `embedded`: `x` is already tokens [B, N, V] (the sensor's conv tokenizer): the patch embedding
    is skipped (its kernel is still created at init, so the parameters are the same whoever reads
    the ViT); pos_ids still index the grid row-major, so N must fit in it."""
    cfg = self.cfg
    grid = tuple(grid or cfg.grid)
    what = "image_vit (embedded tokens)" if embedded else "image_vit"
    validate_patches(what, x_bnp, mask_bn, pos_ids_bn, cfg.emb_dim if embedded else self.patch_dim,
                     grid)
    stored = math.isqrt(cfg.num_pos - 1)
    if stored * stored != cfg.num_pos - 1:
      raise ConfigError(f"config field `image_vit.num_pos`: {cfg.num_pos} is not 1 + g*g (a class "
                        "row, then a square grid)")
    batch = x_bnp.shape[0]

    embedding = Linear(cfg.emb_dim, (PATCH, EMBED), use_bias=False, name="embedding")
    if not embedded:
      x_bnv = embedding(x_bnp.astype(jnp.float32))
    else:
      if self.is_initializing():
        embedding(jnp.zeros((1, self.patch_dim), jnp.float32))
      x_bnv = x_bnp.astype(jnp.float32)
    cls_v = _prefix_token(self, "class_embedding", cfg.emb_dim, cfg.emb_dim ** -0.5)
    table_rv = _position_table(self, cfg)  # R = num_pos: row 0 class token, then the g x g grid
    grid_gv = resize_positions(table_rv[1:].reshape(stored, stored, -1), grid).reshape(
        grid[0] * grid[1], -1)
    x_bsv = jnp.concatenate([jnp.broadcast_to(cls_v + table_rv[0], (batch, 1, cfg.emb_dim)),
                             x_bnv + jnp.take(grid_gv, pos_ids_bn, axis=0)], axis=1)
    x_bsv = _layer_norm(self.LN_EPS, "pre_ln")(x_bsv)

    last_bsv, block1_bsv = VitTransformer(cfg, self.LN_EPS, tanh_gelu=False, name="transformer")(
        x_bsv, _with_prefix_valid(mask_bn, 1), deterministic)
    return last_bsv[:, 1:], block1_bsv[:, 1:]


class AudioViT(_ViT):
  """AST-style audio ViT (see the module docstring). Input patches are (dh dw) spectrogram bins."""

  CHANNELS = 1
  LN_EPS = 1e-6

  @nn.compact
  def __call__(self, x_bnp: jax.Array, mask_bn: jax.Array, pos_ids_bn: jax.Array,
               deterministic: bool = True, grid: Optional[Grid] = None
               ) -> Tuple[jax.Array, jax.Array]:
    """`grid` is accepted for a uniform call but, as in the release, never used: the AST table is
    not resized and the transposed index always uses this ViT's own cfg.grid."""
    del grid
    cfg = self.cfg
    h, w = cfg.grid
    validate_patches("audio_vit", x_bnp, mask_bn, pos_ids_bn, self.patch_dim, (h, w))
    if 2 + h * w > cfg.num_pos:
      raise ConfigError(f"config field `audio_vit.num_pos`: the {h}x{w} grid needs {2 + h * w} "
                        f"position rows, the table has {cfg.num_pos}")
    batch = x_bnp.shape[0]

    x_bnv = Linear(cfg.emb_dim, (PATCH, EMBED), name="embedding")(x_bnp.astype(jnp.float32))
    cls_v = _prefix_token(self, "cls_token", cfg.emb_dim, 0.02)
    dist_v = _prefix_token(self, "dist_token", cfg.emb_dim, 0.02)
    table_rv = _position_table(self, cfg)  # rows 0, 1: class, distillation; 2: patches
    # The AST table is laid out over the transposed (w, h) grid: our row-major patch (r, c) is its
    # row c * h + r.
    pos_t_bn = (pos_ids_bn % w) * h + pos_ids_bn // w
    prefix_2v = jnp.stack([cls_v + table_rv[0], dist_v + table_rv[1]])
    x_bsv = jnp.concatenate([jnp.broadcast_to(prefix_2v, (batch, 2, cfg.emb_dim)),
                             x_bnv + jnp.take(table_rv[2:], pos_t_bn, axis=0)], axis=1)

    last_bsv, block1_bsv = VitTransformer(cfg, self.LN_EPS, tanh_gelu=True, name="transformer")(
        x_bsv, _with_prefix_valid(mask_bn, 2), deterministic)
    return last_bsv[:, 2:], block1_bsv[:, 2:]
