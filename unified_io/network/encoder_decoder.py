"""The whole network: per-modality embedders around the encoder-decoder trunk, with tied heads.

Axis legend: B batch, L encoder length, T decoder length, D embed, K head_dim, V vocab.

The batch is a nested dict, the release's layout:
  {"inputs":  {"text": {"tokens", "mask", "pos_ids"}, ...},
   "targets": {"text": {"inputs", "targets", "mask", "loss_mask"}, ...}}
Modalities missing from a batch are skipped. Encoder parts are concatenated in `Modality` order,
decoder parts too; each target part gets its own segment id so targets never attend to each other.
With `cfg.pack_pairs`, examples 2i and 2i+1 then share one encoder row and one decoder row
(`unified_io.network.packing`); outputs come back in the unpacked per-example layout.
"""

from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unified_io.network import masks

from unified_io.network import packing
from unified_io.config import UnifiedIOConfig
from unified_io.network.embedders import INPUT_EMBEDDERS, TARGET_EMBEDDERS, VITS, TargetPart
from unified_io.network.embedders.projection import universal_projection
from unified_io.network.layers import TokenEmbedder
from unified_io.modalities import Modality
from unified_io.network.trunk import Decoder, Encoder


class Encoded(NamedTuple):
  hidden: jax.Array  # [B, L, D] encoder output (packed rows when packing)
  mask: jax.Array  # [B, L]
  rope: jax.Array  # [B, L, K]
  # Packed rows only: which example of its pair each token belongs to, and the encoder layout.
  example_ids: Optional[jax.Array] = None  # [B, L] int32
  layout: Optional[packing.PairLayout] = None


# Decoder segment ids of packed rows: example index * this + the target's id, so neither two
# examples nor two targets of one example attend to each other.
_NUM_TARGET_IDS = 1 + max(m.target_id for m in Modality if m.can_be_target)


class TargetOutput(NamedTuple):
  logits: jax.Array  # [B, T, V] float32
  targets: jax.Array  # [B, T]
  loss_mask: jax.Array  # [B, T]


def target_layout(parts: Sequence[TargetPart]) -> masks.TargetLayout:
  """Where each decoder token sits in its target's grid, and which inputs are noised."""
  batch = parts[0].embed.shape[0]
  lengths = [p.embed.shape[1] for p in parts]
  index = jnp.concatenate([jnp.arange(n, dtype=jnp.int32) for n in lengths])
  width = jnp.concatenate([jnp.full((n,), p.grid_width, jnp.int32) for p, n in zip(parts, lengths)])
  if all(p.noisy is None for p in parts):  # no task mask: nothing is noised
    return masks.TargetLayout(index, width)
  noisy = jnp.concatenate([jnp.zeros((batch, n), bool) if p.noisy is None else p.noisy.astype(bool)
                           for p, n in zip(parts, lengths)], axis=1)
  return masks.TargetLayout(index, width, noisy)


class UnifiedIONetwork(nn.Module):
  cfg: UnifiedIOConfig

  def setup(self):
    trunk = self.cfg.trunk
    for registry, modalities, side in ((INPUT_EMBEDDERS, self.cfg.input_modalities, "input"),
                                       (TARGET_EMBEDDERS, self.cfg.target_modalities, "target")):
      missing = [m.value for m in modalities if m not in registry]
      if missing:
        raise NotImplementedError(f"no {side} embedder is registered for {missing} "
                                  f"(have {[m.value for m in registry]})")
    # Like the release, the trunk always owns a token table (= tied head) for every target modality
    # with a vocabulary, so checkpoints have one layout whatever a task uses.
    self.token_embedders = {m.value: TokenEmbedder(trunk.vocab_size(m), trunk)
                            for m in Modality if m.can_be_target and trunk.vocab_size(m) > 0}
    # One ViT per kind, shared by the input and history embedders that use it (as in the release).
    vit_names = {INPUT_EMBEDDERS[m].VIT for m in self.cfg.input_modalities} - {None}
    self.vits = {name: VITS[name](getattr(self.cfg, name)) for name in sorted(vit_names)}
    # OneLLM's universal projection (cfg.input_projection): one module shared, like the ViTs, by
    # the input embedders it serves; None = each keeps the release's own projection.
    self.input_projection = universal_projection(
        self.cfg, {m: INPUT_EMBEDDERS[m].feature_width(self.cfg)
                   for m in self.cfg.projected_modalities})
    self.input_embedders = {
        m.value: self._embedder(INPUT_EMBEDDERS[m], **(
            {"input_projection": self.input_projection} if m in self.cfg.projected_modalities
            else {}))
        for m in self.cfg.input_modalities}
    self.target_embedders = {m.value: self._embedder(TARGET_EMBEDDERS[m])
                             for m in self.cfg.target_modalities}
    self.encoder = Encoder(trunk)
    self.decoder = Decoder(trunk)

  def _embedder(self, cls, **shared):
    """An embedder with the shared pieces it declares (`TOKENS`: a token table, `VIT`: a ViT),
    and any others given (`input_projection`)."""
    token_embedder = self.token_embedders[cls.TOKENS.value] if cls.TOKENS is not None else None
    vit = self.vits[cls.VIT] if cls.VIT is not None else None
    return cls(self.cfg, token_embedder=token_embedder, vit=vit, **shared)

  def encode(self, inputs: Mapping[str, Mapping], deterministic: bool = True) -> Encoded:
    parts = [self.input_embedders[m.value](inputs[m.value], deterministic)
             for m in self.cfg.input_modalities if m.value in inputs]
    if not parts:
      raise ValueError(f"the batch has no input modality; expected some of "
                       f"{[m.value for m in self.cfg.input_modalities]} under 'inputs'")
    embed_bld = jnp.concatenate([p.embed for p in parts], axis=1)
    mask_bl = jnp.concatenate([p.mask for p in parts], axis=1)
    rope_blk = jnp.concatenate([p.rope for p in parts], axis=1)
    if not self.cfg.pack_pairs:
      return Encoded(self.encoder(embed_bld, mask_bl, rope_blk, deterministic), mask_bl, rope_blk)
    layout = packing.pair_layout(mask_bl, self.cfg.packed_encoder_length or mask_bl.shape[1])
    rope_bpk = packing.pack(rope_blk, layout)
    hidden_bpd = self.encoder(packing.pack(embed_bld, layout), layout.valid_bp, rope_bpk,
                              deterministic, layout.example_bp)
    return Encoded(hidden_bpd, layout.valid_bp, rope_bpk, layout.example_bp, layout)

  def decode(self, targets: Mapping[str, Mapping], encoded: Encoded,
             deterministic: bool = True) -> Dict[str, TargetOutput]:
    present = [m for m in self.cfg.target_modalities if m.value in targets]
    if not present:
      raise ValueError(f"the batch has no target modality; expected some of "
                       f"{[m.value for m in self.cfg.target_modalities]} under 'targets'")
    parts = [self.target_embedders[m.value](targets[m.value], deterministic) for m in present]
    lengths = [p.embed.shape[1] for p in parts]
    batch = parts[0].embed.shape[0]
    segment_ids_bt = jnp.concatenate(
        [jnp.full((batch, n), m.target_id, jnp.int32) for m, n in zip(present, lengths)], axis=1)
    layout = target_layout(parts) if self.cfg.dynamic_masking else None
    embed_btd = jnp.concatenate([p.embed for p in parts], axis=1)
    mask_bt = jnp.concatenate([p.mask for p in parts], axis=1)
    rope_btk = jnp.concatenate([p.rope for p in parts], axis=1)
    if self.cfg.pack_pairs:
      hidden_btd, placed_bt = self._decode_packed(embed_btd, mask_bt, segment_ids_bt, rope_btk,
                                                  layout, encoded, deterministic)
    else:
      stops = np.cumsum(lengths).tolist()
      segments = tuple(zip([0] + stops[:-1], stops))
      hidden_btd = self.decoder(embed_btd, mask_bt, segment_ids_bt, rope_btk, encoded.hidden,
                                encoded.mask, encoded.rope, deterministic, layout, segments)
      placed_bt = None

    outputs, start = {}, 0
    for m, part, n in zip(present, parts, lengths):
      logits_btv = self.token_embedders[m.value].logits(hidden_btd[:, start:start + n])
      loss_mask_bt = part.loss_mask
      if placed_bt is not None:  # tokens that did not fit in their packed row are not scored
        loss_mask_bt = loss_mask_bt * placed_bt[:, start:start + n].astype(loss_mask_bt.dtype)
      outputs[m.value] = TargetOutput(logits_btv, part.targets, loss_mask_bt)
      start += n
    return outputs

  def _decode_packed(self, embed_etd, mask_et, segment_ids_et, rope_etk,
                     layout: Optional[masks.TargetLayout], encoded: Encoded,
                     deterministic: bool) -> Tuple[jax.Array, jax.Array]:
    """The decoder over packed pairs of examples (E = 2B of them); hidden states come back
    unpacked [E, T, D], with [E, T] saying which tokens had a slot in their row."""
    pairs = packing.pair_layout(mask_et, self.cfg.packed_decoder_length or mask_et.shape[1])
    segment_ids_bq = pairs.example_bp * _NUM_TARGET_IDS + packing.pack(segment_ids_et, pairs)
    if layout is not None:
      def per_example(a_t):
        return jnp.broadcast_to(a_t, mask_et.shape)
      layout = masks.TargetLayout(
          packing.pack(per_example(layout.index), pairs),
          packing.pack(per_example(layout.grid_width), pairs),
          None if layout.noisy is None else packing.pack(layout.noisy, pairs))
    hidden_bqd = self.decoder(
        packing.pack(embed_etd, pairs), pairs.valid_bp, segment_ids_bq,
        packing.pack(rope_etk, pairs), encoded.hidden, encoded.mask, encoded.rope, deterministic,
        layout, None, (pairs.example_bp, encoded.example_ids))
    self.sow("intermediates", "packing", packing.packing_stats(encoded.layout, pairs))
    return packing.unpack(hidden_bqd, pairs), packing.placed(pairs)

  def decode_cached(self, modality: str, inputs_bl: jax.Array, start: jax.Array,
                    enc_mask_bs: jax.Array, encoded_bsd: Optional[jax.Array] = None,
                    enc_rope_bsk: Optional[jax.Array] = None, cache_length: int = 0) -> jax.Array:
    """Incremental decoding of one target: logits [B, L, V] of the L decoder inputs at positions
    start .. start + L - 1, given everything before them through the "cache" collection.

    The first call (start 0) passes the encoder output and its RoPE rows, which the cross-attention
    caches; later calls pass None for both. `unified_io.decoding` drives this. With
    `cfg.dynamic_masking`, each layer applies its attention pattern over the target's grid, as the
    full pass does for a target with no task mask (nothing is noised while generating).
    """
    if self.cfg.pack_pairs:
      raise ValueError("decode_cached runs one example per row: decode with a network whose config "
                       "has pack_pairs off (UnifiedIOModel.inference_module)")
    if modality not in self.target_embedders:
      raise ValueError(f"cannot decode {modality!r}: target modalities of this model are "
                       f"{list(self.target_embedders)}")
    embedder = self.target_embedders[modality]
    positions_l = start + jnp.arange(inputs_bl.shape[1], dtype=jnp.int32)
    embed_bld, rope_blk = embedder.embed_tokens(inputs_bl,
                                                jnp.broadcast_to(positions_l, inputs_bl.shape))
    layout = None
    if self.cfg.dynamic_masking:
      layout = masks.TargetLayout(positions_l, jnp.full(positions_l.shape, embedder.grid_width(),
                                                        jnp.int32))
    valid_bl = jnp.ones(inputs_bl.shape, jnp.int32)
    hidden_bld = self.decoder(embed_bld, valid_bl, valid_bl, rope_blk, encoded_bsd, enc_mask_bs,
                              enc_rope_bsk, True, layout, cache_length=cache_length)
    return self.token_embedders[modality].logits(hidden_bld)

  def render(self, modality: str, targets_bt: jax.Array) -> jax.Array:
    """Image or audio target tokens (VQ codes + 2) -> pixels [B, H, W, 3] / spectrogram."""
    if modality not in self.target_embedders or not hasattr(self.target_embedders[modality],
                                                            "render"):
      raise ValueError(f"cannot render {modality!r} tokens; renderable targets: "
                       f"{[m for m, e in self.target_embedders.items() if hasattr(e, 'render')]}")
    return self.target_embedders[modality].render(targets_bt)

  def __call__(self, batch: Mapping[str, Mapping], deterministic: bool = True
               ) -> Dict[str, TargetOutput]:
    if self.is_initializing():  # flax creates parameters lazily; create every table, used or not
      for embedder in self.token_embedders.values():
        embedder.embedding  # pylint: disable=pointless-statement
    return self.decode(batch["targets"], self.encode(batch["inputs"], deterministic), deterministic)
