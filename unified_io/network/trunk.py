"""The encoder and decoder stacks of the trunk: pre-RMSNorm blocks with residual connections.

Axis legend: B batch, L encoder length, T decoder length, D embed, K head_dim.

Encoder layer:  x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)).
Decoder layer:  y += SelfAttn(RMSNorm(y)); y += CrossAttn(RMSNorm(y), encoded); y += MLP(RMSNorm(y)).
Cross-attention applies decoder RoPE positions to q and encoder positions to k, as the release does.
Each stack ends with an RMSNorm.

With `cfg.scan_layers` each stack runs its layers under `nn.scan`: one traced and compiled layer
body instead of N, the layers' parameters stacked as `layers/...` [N, ...] (logical axis "layers";
`unified_io.network.layer_stacking` converts to and from the per-layer `layers_{i}` layout), dropout rngs
split per layer, and rematerialisation (`cfg.remat_policy`) inside the body. The numbers
equal the per-layer stack's given the same (stacked) parameters.
"""

from functools import partial
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unified_io.network import masks
from unified_io.config import RematPolicy, TrunkConfig
from unified_io.network.layers import Attention, GatedMLP, RMSNorm
from unified_io.network.layers.attention import CacheKind

ACTIVATION_AXES = ("batch", "length", "embed")


class EncoderLayer(nn.Module):
  cfg: TrunkConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_bld, mask_b1ll, rope_blk):
    cfg = self.cfg
    dropout = nn.Dropout(cfg.dropout_rate)
    h_bld = RMSNorm(cfg.norm_eps, name="pre_attention_norm")(x_bld)
    h_bld = Attention(cfg, name="attention")(h_bld, h_bld, mask_b1ll, rope_blk, rope_blk,
                                             self.deterministic)
    x_bld = x_bld + dropout(h_bld, deterministic=self.deterministic)
    h_bld = GatedMLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, name="pre_mlp_norm")(x_bld),
                                      self.deterministic)
    x_bld = x_bld + dropout(h_bld, deterministic=self.deterministic)
    return nn.with_logical_constraint(x_bld, ACTIVATION_AXES)


class DecoderLayer(nn.Module):
  cfg: TrunkConfig
  deterministic: bool = True
  # [start, stop) target segments; the self-attention mask never crosses them (see Decoder).
  segments: Optional[Tuple[Tuple[int, int], ...]] = None
  # > 0: incremental decoding with key/value caches of this length (see Decoder).
  cache_length: int = 0

  @nn.compact
  def __call__(self, y_btd, self_mask_b1tt, rope_btk, encoded_bld, cross_mask_b1tl, enc_rope_blk):
    cfg = self.cfg
    dropout = nn.Dropout(cfg.dropout_rate)
    h_btd = RMSNorm(cfg.norm_eps, name="pre_self_attention_norm")(y_btd)
    cached = self.cache_length > 0
    h_btd = Attention(cfg, name="self_attention")(
        h_btd, h_btd, self_mask_b1tt, rope_btk, rope_btk, self.deterministic, blocks=self.segments,
        cache=CacheKind.SELF if cached else None, cache_length=self.cache_length)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    h_btd = RMSNorm(cfg.norm_eps, name="pre_cross_attention_norm")(y_btd)
    h_btd = Attention(cfg, name="encoder_decoder_attention")(
        h_btd, encoded_bld, cross_mask_b1tl, rope_btk, enc_rope_blk, self.deterministic,
        cache=CacheKind.CROSS if cached else None)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    h_btd = GatedMLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, name="pre_mlp_norm")(y_btd),
                                      self.deterministic)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    return nn.with_logical_constraint(y_btd, ACTIVATION_AXES)


# `TrunkConfig.remat_policy` -> what a rematerialised layer keeps for the backward pass
# (every policy but RematPolicy.NONE).
REMAT_POLICIES = {
    RematPolicy.FULL: jax.checkpoint_policies.nothing_saveable,
    RematPolicy.DOTS: jax.checkpoint_policies.checkpoint_dots,
    RematPolicy.DOTS_NO_BATCH: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _maybe_remat(layer_cls, cfg: TrunkConfig, prevent_cse: bool = True):
  """`layer_cls` rematerialised under the config's policy, or itself under RematPolicy.NONE.

  Inside `nn.scan` the CSE guard is unnecessary (the loop already keeps XLA from merging the
  recomputation with the forward pass) and only costs speed, hence `prevent_cse`.
  """
  if cfg.remat_policy == RematPolicy.NONE:
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=prevent_cse)


# ------------------------------------------------------------------------------------------------
# Scan over layers.
# ------------------------------------------------------------------------------------------------
LAYERS_AXIS = "layers"  # logical name of the stacked parameters' leading axis


class _ScannedEncoderLayer(EncoderLayer):
  """An `nn.scan` body: (carry x, broadcast mask and rope) -> (x, no per-layer output)."""

  def __call__(self, x_bld, mask_b1ll, rope_blk):
    return super().__call__(x_bld, mask_b1ll, rope_blk), None


class _ScannedDecoderLayer(DecoderLayer):
  """An `nn.scan` body. `pattern` is this layer's scanned slice: None when `self_masks` is the one
  self-attention mask, else the layer's row of `self_masks` [P, B, 1, T, T] (its attention
  pattern, as `masks.layer_pattern` schedules)."""

  def __call__(self, y_btd, pattern, self_masks, rope_btk, encoded_bld, cross_mask_b1tl,
               enc_rope_blk):
    mask_b1tt = self_masks if pattern is None else self_masks[pattern]
    return super().__call__(y_btd, mask_b1tt, rope_btk, encoded_bld, cross_mask_b1tl,
                            enc_rope_blk), None


def _scan_stack(body_cls, cfg: TrunkConfig, num_layers: int, num_scanned_args: int,
                num_broadcast_args: int):
  """`body_cls` scanned `num_layers` times over its carry; its other arguments are the scanned
  ones (leading axis = layer) then the broadcast ones."""
  # (intermediates too, so that `sow` and `capture_intermediates` see every layer)
  return nn.scan(_maybe_remat(body_cls, cfg, prevent_cse=False),
                 variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(0,) * num_scanned_args + (nn.broadcast,) * num_broadcast_args,
                 length=num_layers,
                 metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})


# The decoding cache of a scanned decoder is stored batch-major, [B, N, ...] (N = layers), so code
# that reorders cache rows along the batch (beam search) treats it as the per-layer caches, whose
# leaves are [B, ...] or per-layer scalars (the write index, stored broadcast as [B, N]). The
# scan itself wants the layer axis first: these convert on the way in and out of the scan.
def _cache_to_scan_layout(variables):
  def convert(x):
    return x[0] if x.ndim == 2 else jnp.swapaxes(x, 0, 1)
  return jax.tree_util.tree_map(convert, variables)


def _cache_to_batch_layout(batch: int, variables):
  def convert(x):
    if x.ndim == 1:  # a per-layer scalar
      return jnp.broadcast_to(x[None], (batch,) + x.shape)
    if x.ndim == 2 or x.shape[1] != batch:
      raise ValueError(f"a scanned decoder's cache variable, stacked {x.shape}, is neither a "
                       f"per-layer scalar nor a per-layer array with the batch ({batch}) first")
    return jnp.swapaxes(x, 0, 1)
  return jax.tree_util.tree_map(convert, variables)


def _layer_patterns(num_layers: int) -> np.ndarray:
  """[N] int32: each decoder layer's `masks.Pattern` (the index into `decoder_layer_masks`)."""
  return np.asarray([int(masks.layer_pattern(i, num_layers)) for i in range(num_layers)],
                    np.int32)


class Encoder(nn.Module):
  cfg: TrunkConfig

  @nn.compact
  def __call__(self, x_bld, valid_bl, rope_blk, deterministic: bool = True,
               example_ids_bl: Optional[jax.Array] = None):
    """`example_ids_bl`: for packed rows, tokens attend only within their own example."""
    cfg = self.cfg
    mask_b1ll = masks.padding_mask(valid_bl, valid_bl)
    if example_ids_bl is not None:
      mask_b1ll = mask_b1ll & masks.same_segment(example_ids_bl, example_ids_bl)
    x_bld = nn.Dropout(cfg.dropout_rate)(x_bld, deterministic=deterministic)
    x_bld = nn.with_logical_constraint(x_bld, ACTIVATION_AXES)
    if cfg.scan_layers:
      stack_cls = _scan_stack(_ScannedEncoderLayer, cfg, cfg.num_encoder_layers, 0, 2)
      x_bld, _ = stack_cls(cfg, deterministic, name=LAYERS_AXIS)(x_bld, mask_b1ll, rope_blk)
    else:
      layer_cls = _maybe_remat(EncoderLayer, cfg)
      for i in range(cfg.num_encoder_layers):
        x_bld = layer_cls(cfg, deterministic, name=f"layers_{i}")(x_bld, mask_b1ll, rope_blk)
    x_bld = RMSNorm(cfg.norm_eps, name="encoder_norm")(x_bld)
    return nn.Dropout(cfg.dropout_rate)(x_bld, deterministic=deterministic)


class Decoder(nn.Module):
  cfg: TrunkConfig

  @nn.compact
  def __call__(self, y_btd, valid_bt, segment_ids_bt, rope_btk, encoded_bld, enc_valid_bl,
               enc_rope_blk, deterministic: bool = True,
               layout: Optional[masks.TargetLayout] = None,
               segments: Optional[Tuple[Tuple[int, int], ...]] = None,
               example_ids: Optional[Tuple[jax.Array, jax.Array]] = None,
               cache_length: int = 0):
    """With a `layout`, each layer also applies its attention pattern and the dynamic mask.

    `segments`: the static [start, stop) spans of `segment_ids_bt` (each target's part), when the
    caller knows them; self-attention then runs per segment instead of over the full [T, T].
    `example_ids`: for packed rows, (decoder [B, T], encoder [B, L]) example ids; cross-attention
    then stays within an example (`segment_ids_bt` must already separate examples).
    `cache_length` > 0: incremental decoding (`unified_io.decoding`). `y_btd` holds the next tokens
    of ONE target, all valid; self-attention sees every position decoded so far through the cache
    (causal by position); `encoded_bld` is given on the first call and None afterwards (the
    cross-attention keys and values are cached). A `layout` then describes the new tokens only
    (`masks.cached_layer_masks`): each layer applies its pattern over the cached positions.
    """
    cfg = self.cfg
    if cache_length:
      if example_ids is not None or segments is not None:
        raise NotImplementedError("cached decoding runs one target per row: no packed rows or "
                                  "segments")
      self_mask_b1tt = None  # the cache applies the causal mask
      per_pattern = None if layout is None else masks.cached_layer_masks(layout, cache_length)
    else:
      self_mask_b1tt = masks.decoder_self_mask(valid_bt, segment_ids_bt)
      per_pattern = None if layout is None else masks.decoder_layer_masks(self_mask_b1tt, layout)
    cross_mask_b1tl = masks.padding_mask(valid_bt, enc_valid_bl)
    if example_ids is not None:
      cross_mask_b1tl = cross_mask_b1tl & masks.same_segment(*example_ids)
    y_btd = nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)
    y_btd = nn.with_logical_constraint(y_btd, ACTIVATION_AXES)
    if cfg.scan_layers:
      # The scanned body picks its layer's pattern mask from all of them (built once either way).
      patterns_n, self_masks = None, self_mask_b1tt
      if per_pattern is not None:
        patterns_n = jnp.asarray(_layer_patterns(cfg.num_decoder_layers))
        self_masks = jnp.stack([per_pattern[p] for p in masks.Pattern])  # [P, B or 1, 1, T, T]
      stack_cls = _scan_stack(_ScannedDecoderLayer, cfg, cfg.num_decoder_layers, 1, 5)
      if cache_length:  # the caches are stored batch-major (see _cache_to_scan_layout)
        stack_cls = nn.map_variables(stack_cls, "cache", _cache_to_scan_layout,
                                     partial(_cache_to_batch_layout, y_btd.shape[0]), mutable=True)
      y_btd, _ = stack_cls(cfg, deterministic, segments, cache_length, name=LAYERS_AXIS)(
          y_btd, patterns_n, self_masks, rope_btk, encoded_bld, cross_mask_b1tl, enc_rope_blk)
    else:
      layer_cls = DecoderLayer if cache_length else _maybe_remat(DecoderLayer, cfg)
      for i in range(cfg.num_decoder_layers):
        layer_mask_b1tt = (self_mask_b1tt if per_pattern is None else
                           per_pattern[masks.layer_pattern(i, cfg.num_decoder_layers)])
        y_btd = layer_cls(cfg, deterministic, segments, cache_length, name=f"layers_{i}")(
            y_btd, layer_mask_b1tt, rope_btk, encoded_bld, cross_mask_b1tl, enc_rope_blk)
    y_btd = RMSNorm(cfg.norm_eps, name="decoder_norm")(y_btd)
    return nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)
