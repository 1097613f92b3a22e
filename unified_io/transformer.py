"""The encoder and decoder stacks of the trunk: pre-RMSNorm blocks with residual connections.

Axis legend: B batch, L encoder length, T decoder length, D embed, K head_dim.

Encoder layer:  x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)).
Decoder layer:  y += SelfAttn(RMSNorm(y)); y += CrossAttn(RMSNorm(y), encoded); y += MLP(RMSNorm(y)).
Cross-attention applies decoder RoPE positions to q and encoder positions to k, as the release does.
Each stack ends with an RMSNorm.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax

from unified_io import masks
from unified_io.config import TrunkConfig
from unified_io.layers import Attention, GatedMLP, RMSNorm

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
        cache="self" if cached else None, cache_length=self.cache_length)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    h_btd = RMSNorm(cfg.norm_eps, name="pre_cross_attention_norm")(y_btd)
    h_btd = Attention(cfg, name="encoder_decoder_attention")(
        h_btd, encoded_bld, cross_mask_b1tl, rope_btk, enc_rope_blk, self.deterministic,
        cache="cross" if cached else None)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    h_btd = GatedMLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, name="pre_mlp_norm")(y_btd),
                                      self.deterministic)
    y_btd = y_btd + dropout(h_btd, deterministic=self.deterministic)
    return nn.with_logical_constraint(y_btd, ACTIVATION_AXES)


def _maybe_remat(layer_cls, cfg: TrunkConfig):
  # Keep only each layer's inputs; everything inside is recomputed in the backward pass.
  return nn.remat(layer_cls, policy=jax.checkpoint_policies.nothing_saveable) if cfg.remat else layer_cls


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
    cross-attention keys and values are cached).
    """
    cfg = self.cfg
    if cache_length:
      if layout is not None or example_ids is not None or segments is not None:
        raise NotImplementedError("cached decoding supports neither attention patterns / dynamic "
                                  "masking nor packed rows; decode with those off")
      cross_mask_b1tl = masks.padding_mask(valid_bt, enc_valid_bl)
      for i in range(cfg.num_decoder_layers):
        y_btd = DecoderLayer(cfg, True, None, cache_length, name=f"layers_{i}")(
            y_btd, None, rope_btk, encoded_bld, cross_mask_b1tl, enc_rope_blk)
      return RMSNorm(cfg.norm_eps, name="decoder_norm")(y_btd)
    self_mask_b1tt = masks.decoder_self_mask(valid_bt, segment_ids_bt)
    per_pattern = None if layout is None else masks.decoder_layer_masks(self_mask_b1tt, layout)
    cross_mask_b1tl = masks.padding_mask(valid_bt, enc_valid_bl)
    if example_ids is not None:
      cross_mask_b1tl = cross_mask_b1tl & masks.same_segment(*example_ids)
    y_btd = nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)
    y_btd = nn.with_logical_constraint(y_btd, ACTIVATION_AXES)
    layer_cls = _maybe_remat(DecoderLayer, cfg)
    for i in range(cfg.num_decoder_layers):
      layer_mask_b1tt = (self_mask_b1tt if per_pattern is None else
                         per_pattern[masks.layer_pattern(i, cfg.num_decoder_layers)])
      y_btd = layer_cls(cfg, deterministic, segments, name=f"layers_{i}")(
          y_btd, layer_mask_b1tt, rope_btk, encoded_bld, cross_mask_b1tl, enc_rope_blk)
    y_btd = RMSNorm(cfg.norm_eps, name="decoder_norm")(y_btd)
    return nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)
