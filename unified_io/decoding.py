"""Generating targets: cached incremental decoding, greedy / sampling / beam search, classifier-free
guidance, vocabulary masks per target modality, and scoring of answer options.

Axis legend: B batch, N beams or options, T generated length, V vocab, S encoder length.

Everything runs on `UnifiedIOModel.inference_module`, one example per row (a config's pair
packing is a training layout), and is jitted with static shapes. The decoder runs one token per
step over key/value caches (`UnifiedIONetwork.decode_cached`): the self-attention cache holds
every position decoded so far, the cross-attention cache the encoder's keys and values, computed
once. With `cfg.dynamic_masking` the cached decoder applies the full pass's attention patterns to
image and audio targets (nothing is noised while generating). Text stops at EOS (a `while_loop`
ends when every row is done); image and audio targets always fill their token grid and never emit
EOS, only VQ codes (`allowed_tokens`).

Beam search keeps N live hypotheses and the N best finished ones per example; a hypothesis that
emits EOS is finished with score log p / ((5 + length) / 6) ** alpha (length counts the EOS; the
GNMT length penalty t5x uses). It stops early once no live hypothesis can beat the worst finished
one; at the end, examples with fewer than N finished hypotheses take live ones, scored at the
full length.
"""

import dataclasses
import enum
import functools
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from unified_io.model import UnifiedIOModel, modality_loss
from unified_io.modalities import Modality
from unified_io.network.encoder_decoder import Encoded, UnifiedIONetwork

BOS_ID = 0
EOS_ID = 1
CODE_OFFSET = 2  # image / audio tokens are VQ codes + 2 (0 = BOS, 1 = MASK)
_NEG = -1e9  # the logit of a token a row may not produce (finite: no NaN in softmax or top-k)


class DecodeMethod(str, enum.Enum):
  """How the next token is picked."""

  GREEDY = "greedy"  # the most likely token
  SAMPLE = "sample"  # drawn from the (temperature / top-k / top-p) distribution
  BEAM = "beam"  # beam search (text; see the module docstring)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to pick tokens. Hashable: jitted functions are specialised on it."""

  # A DecodeMethod or its value ("greedy", "sample", "beam": gin and the command line).
  method: DecodeMethod = DecodeMethod.GREEDY
  max_length: int = 32  # text only; image and audio targets always produce their full grid
  temperature: float = 1.0  # sample
  top_k: int = 0  # sample: keep the k most likely tokens (0 = all)
  top_p: float = 1.0  # sample: keep the smallest set of tokens whose probability reaches p
  num_beams: int = 4  # beam
  length_penalty: float = 0.6  # beam: alpha of ((5 + length) / 6) ** alpha
  guidance_scale: float = 1.0  # image / audio: classifier-free guidance (1 = off)

  def __post_init__(self):
    try:
      object.__setattr__(self, "method", DecodeMethod(self.method))
    except ValueError:
      raise ValueError(f"decode method must be greedy, sample or beam, got {self.method!r}"
                       ) from None
    if self.max_length < 1 or self.num_beams < 1:
      raise ValueError("max_length and num_beams must be at least 1")
    if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError("need temperature > 0, 0 < top_p <= 1 and top_k >= 0")


class Generated(NamedTuple):
  tokens: jax.Array  # [B, T] int32; text: EOS-terminated then 0 (PAD)
  lengths: jax.Array  # [B] tokens up to and including EOS (T when no EOS)
  scores: jax.Array  # [B] sum of log-probabilities (beam: divided by the length penalty)


def allowed_tokens(model: UnifiedIOModel, modality: Modality,
                   text_vocab_size: Optional[int] = None) -> np.ndarray:
  """bool [V]: the ids a generated `modality` token may take.

  Text: EOS and every id of the tokenizer (`text_vocab_size`, default the table size), never the
  padded rows or BOS/PAD. Image / audio: the VQ codes only (+2), never BOS, MASK or padded rows.
  """
  cfg = model.cfg
  modality = Modality(modality)
  if not modality.can_be_target:
    raise ValueError(f"{modality.value!r} is not a target modality")
  table = cfg.trunk.vocab_size(modality)
  allowed = np.zeros(table, bool)
  if modality == Modality.TEXT:
    allowed[EOS_ID:min(table, text_vocab_size or table)] = True
  elif modality == Modality.IMAGE:
    allowed[CODE_OFFSET:CODE_OFFSET + cfg.image_vqgan.n_embed] = True
  else:
    allowed[CODE_OFFSET:CODE_OFFSET + cfg.audio_vqgan.vocab_size] = True
  return allowed


def target_length(model: UnifiedIOModel, modality: Modality, options: DecodeOptions) -> int:
  """Tokens to generate: text up to max_length, image / audio their full token grid."""
  if modality == Modality.TEXT:
    return options.max_length
  vq = model.cfg.image_vqgan if modality == Modality.IMAGE else model.cfg.audio_vqgan
  return int(vq.grid[0] * vq.grid[1])


def null_prompt_inputs(inputs: Mapping[str, Mapping[str, jax.Array]]) -> Dict[str, Dict]:
  """The unconditional twin of `inputs` for classifier-free guidance: the text keeps only its
  prefix token (`[Image] [S]`, ...) and EOS, as the data pipeline writes a dropped prompt; every
  other input modality is absent (masks 0)."""
  out = {}
  for name, feats in inputs.items():
    feats = dict(feats)
    if name == Modality.TEXT:
      tokens_bl = jnp.zeros_like(feats["tokens"])
      tokens_bl = tokens_bl.at[:, 0].set(feats["tokens"][:, 0]).at[:, 1].set(EOS_ID)
      feats["tokens"] = tokens_bl
      feats["mask"] = (jnp.arange(tokens_bl.shape[1]) < 2).astype(feats["mask"].dtype)[None] * \
          jnp.ones_like(feats["mask"])
    else:
      feats["mask"] = jnp.zeros_like(feats["mask"])
    out[name] = feats
  return out


# ------------------------------------------------------------------------------------------------
# The cached decoder, one call per step.
# ------------------------------------------------------------------------------------------------
def encode(model: UnifiedIOModel, params, inputs) -> Encoded:
  return model.inference_module.apply({"params": params}, inputs, method=UnifiedIONetwork.encode)


def start_decoding(model: UnifiedIOModel, params, modality: Modality, encoded: Encoded,
                   length: int):
  """Feeds BOS at position 0: (logits [B, V] of the first token, the cache)."""
  bos_b1 = jnp.full((encoded.hidden.shape[0], 1), BOS_ID, jnp.int32)
  logits_b1v, variables = model.inference_module.apply(
      {"params": params}, modality, bos_b1, jnp.int32(0), encoded.mask, encoded.hidden,
      encoded.rope, length, method=UnifiedIONetwork.decode_cached, mutable=["cache"])
  return logits_b1v[:, 0], variables["cache"]


def decode_step(model: UnifiedIOModel, params, cache, modality: Modality, tokens_b: jax.Array,
                position: jax.Array, enc_mask_bs: jax.Array, length: int):
  """Feeds `tokens_b` at `position`: (logits [B, V] of the next token, the updated cache)."""
  logits_b1v, variables = model.inference_module.apply(
      {"params": params, "cache": cache}, modality, tokens_b[:, None].astype(jnp.int32), position,
      enc_mask_bs, None, None, length, method=UnifiedIONetwork.decode_cached, mutable=["cache"])
  return logits_b1v[:, 0], variables["cache"]


def _masked(logits_bv: jax.Array, allowed_v: jax.Array) -> jax.Array:
  return jnp.where(allowed_v, logits_bv.astype(jnp.float32), _NEG)


def _sample(rng, logits_bv, options: DecodeOptions) -> jax.Array:
  logits_bv = logits_bv / options.temperature
  if options.top_k:
    kth_b1 = jax.lax.top_k(logits_bv, options.top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth_b1, _NEG, logits_bv)
  if options.top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    # Keep a token if the probability mass strictly before it is below p (the top one always).
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    cutoff_b1 = jnp.min(jnp.where(before_bv < options.top_p, sorted_bv, jnp.inf), axis=-1,
                        keepdims=True)
    logits_bv = jnp.where(logits_bv < cutoff_b1, _NEG, logits_bv)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


def _guided(logits_bv: jax.Array, scale: float) -> jax.Array:
  """Rows [cond; uncond] -> uncond + scale * (cond - uncond), for both halves."""
  cond_bv, uncond_bv = jnp.split(logits_bv, 2, axis=0)
  mixed_bv = uncond_bv + scale * (cond_bv - uncond_bv)
  return jnp.concatenate([mixed_bv, mixed_bv], axis=0)


def _greedy_or_sample(model, params, encoded: Encoded, modality: Modality,
                      options: DecodeOptions, allowed_v, rng, length: int, guided: bool
                      ) -> Generated:
  batch = encoded.hidden.shape[0]
  stops_at_eos = modality == Modality.TEXT

  def pick(logits_bv, rng):
    if guided:
      logits_bv = _guided(logits_bv, options.guidance_scale)
    logits_bv = _masked(logits_bv, allowed_v)
    if options.method == DecodeMethod.SAMPLE:
      token_b = _sample(rng, logits_bv, options)
      if guided:  # both halves continue with the conditional row's token
        token_b = jnp.tile(token_b[:batch // 2], 2)
    else:
      token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logp_b = jnp.take_along_axis(jax.nn.log_softmax(logits_bv, axis=-1), token_b[:, None],
                                 axis=-1)[:, 0]
    return token_b, logp_b

  logits_bv, cache = start_decoding(model, params, modality, encoded, length)
  init = dict(t=jnp.int32(0), tokens=jnp.zeros((batch, length), jnp.int32),
              done=jnp.zeros((batch,), bool), score=jnp.zeros((batch,), jnp.float32),
              lengths=jnp.full((batch,), length, jnp.int32), logits=logits_bv, cache=cache,
              rng=rng)

  def cond(s):
    return (s["t"] < length) & ~jnp.all(s["done"])

  def body(s):
    rng, step_rng = jax.random.split(s["rng"])
    token_b, logp_b = pick(s["logits"], step_rng)
    token_b = jnp.where(s["done"], 0, token_b)
    tokens = s["tokens"].at[:, s["t"]].set(token_b)
    score = s["score"] + jnp.where(s["done"], 0.0, logp_b)
    ended_b = ~s["done"] & (token_b == EOS_ID) if stops_at_eos else jnp.zeros_like(s["done"])
    lengths = jnp.where(ended_b, s["t"] + 1, s["lengths"])
    done = s["done"] | ended_b
    # The last step's logits are never used; computing them keeps the loop body uniform.
    logits_bv, cache = decode_step(model, params, s["cache"], modality, token_b, s["t"] + 1,
                                   encoded.mask, length)
    return dict(t=s["t"] + 1, tokens=tokens, done=done, score=score, lengths=lengths,
                logits=logits_bv, cache=cache, rng=rng)

  final = jax.lax.while_loop(cond, body, init)
  out = Generated(final["tokens"], final["lengths"], final["score"])
  if guided:
    out = jax.tree_util.tree_map(lambda a: a[:batch // 2], out)
  return out


# ------------------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------------------
def _length_penalty(length, alpha: float):
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree, beam_idx_bn: jax.Array, batch: int, beams: int):
  """Reorders every [B * N, ...] leaf (and [B, N, ...] leaf) by `beam_idx_bn`."""
  def gather(x):
    if x.ndim == 0:
      return x
    flat = x.shape[0] == batch * beams
    x_bn = x.reshape((batch, beams) + x.shape[1:]) if flat else x
    out = jnp.take_along_axis(x_bn, beam_idx_bn.reshape(beam_idx_bn.shape + (1,) * (x_bn.ndim - 2)),
                              axis=1)
    return out.reshape(x.shape) if flat else out
  return jax.tree_util.tree_map(gather, tree)


def _beam_search(model, params, encoded: Encoded, modality: Modality, options: DecodeOptions,
                 allowed_v, length: int) -> Generated:
  batch, beams, alpha = encoded.hidden.shape[0], options.num_beams, options.length_penalty
  stops_at_eos = modality == Modality.TEXT
  tiled = jax.tree_util.tree_map(lambda a: jnp.repeat(a, beams, axis=0) if a is not None else a,
                                 encoded)
  logits_xv, cache = start_decoding(model, params, modality, tiled, length)
  vocab = logits_xv.shape[-1]
  # Only beam 0 is alive at the start, so the first step does not pick the same token N times.
  live_logp_bn = jnp.tile(jnp.array([0.0] + [_NEG] * (beams - 1), jnp.float32), (batch, 1))
  init = dict(t=jnp.int32(0), live=jnp.zeros((batch, beams, length), jnp.int32),
              live_logp=live_logp_bn, logits=logits_xv, cache=cache,
              fin=jnp.zeros((batch, beams, length), jnp.int32),
              fin_score=jnp.full((batch, beams), _NEG, jnp.float32),
              fin_len=jnp.zeros((batch, beams), jnp.int32))

  def cond(s):
    # Live scores only fall as they grow and the penalty is largest at full length.
    best_live_b = s["live_logp"][:, 0] / _length_penalty(length, alpha)
    worst_fin_b = s["fin_score"][:, -1]
    can_improve = jnp.any(best_live_b > worst_fin_b) if alpha >= 0 else True
    return (s["t"] < length) & can_improve

  def body(s):
    t = s["t"]
    logp_bnv = jax.nn.log_softmax(_masked(s["logits"], allowed_v), axis=-1).reshape(
        batch, beams, vocab)
    cand_bm = (s["live_logp"][:, :, None] + logp_bnv).reshape(batch, beams * vocab)
    top_logp_bk, top_idx_bk = jax.lax.top_k(cand_bm, 2 * beams)
    top_beam_bk, top_token_bk = top_idx_bk // vocab, (top_idx_bk % vocab).astype(jnp.int32)
    top_seq_bkt = jnp.take_along_axis(s["live"], top_beam_bk[..., None], axis=1)
    top_seq_bkt = top_seq_bkt.at[:, :, t].set(top_token_bk)
    is_eos_bk = (top_token_bk == EOS_ID) if stops_at_eos else jnp.zeros_like(top_token_bk, bool)
    valid_bk = top_logp_bk > _NEG / 2

    # Finished: the old pool plus the candidates that just emitted EOS; keep the N best.
    new_fin_score_bk = jnp.where(is_eos_bk & valid_bk, top_logp_bk / _length_penalty(t + 1, alpha),
                                 _NEG)
    pool_score = jnp.concatenate([s["fin_score"], new_fin_score_bk], axis=1)
    pool_seq = jnp.concatenate([s["fin"], top_seq_bkt], axis=1)
    pool_len = jnp.concatenate([s["fin_len"], jnp.full_like(top_token_bk, t + 1)], axis=1)
    fin_score, keep = jax.lax.top_k(pool_score, beams)
    fin = jnp.take_along_axis(pool_seq, keep[..., None], axis=1)
    fin_len = jnp.take_along_axis(pool_len, keep, axis=1)

    # Live: the N best candidates that did not end.
    live_cand_bk = jnp.where(is_eos_bk, _NEG, top_logp_bk)
    live_logp, pick_bn = jax.lax.top_k(live_cand_bk, beams)
    live = jnp.take_along_axis(top_seq_bkt, pick_bn[..., None], axis=1)
    parent_bn = jnp.take_along_axis(top_beam_bk, pick_bn, axis=1)
    token_bn = jnp.take_along_axis(top_token_bk, pick_bn, axis=1)
    cache = _gather_beams(s["cache"], parent_bn, batch, beams)
    logits, cache = decode_step(model, params, cache, modality, token_bn.reshape(-1), t + 1,
                                tiled.mask, length)
    return dict(t=t + 1, live=live, live_logp=live_logp, logits=logits, cache=cache, fin=fin,
                fin_score=fin_score, fin_len=fin_len)

  s = jax.lax.while_loop(cond, body, init)
  # Examples short of N finished hypotheses take live ones at their current length.
  live_score_bn = s["live_logp"] / _length_penalty(s["t"], alpha)
  pool_score = jnp.concatenate([s["fin_score"], live_score_bn], axis=1)
  pool_seq = jnp.concatenate([s["fin"], s["live"]], axis=1)
  pool_len = jnp.concatenate([s["fin_len"], jnp.full_like(s["fin_len"], s["t"])], axis=1)
  best_b = jnp.argmax(pool_score, axis=1)
  tokens = jnp.take_along_axis(pool_seq, best_b[:, None, None], axis=1)[:, 0]
  lengths = jnp.take_along_axis(pool_len, best_b[:, None], axis=1)[:, 0]
  tokens = jnp.where(jnp.arange(length)[None] < lengths[:, None], tokens, 0)
  score = jnp.take_along_axis(pool_score, best_b[:, None], axis=1)[:, 0]
  return Generated(tokens, lengths, score)


# ------------------------------------------------------------------------------------------------
# The public entry points.
# ------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 3, 4, 7))
def _generate(model, params, inputs, modality, options, rng, null_inputs, text_vocab_size):
  length = target_length(model, modality, options)
  allowed_v = jnp.asarray(allowed_tokens(model, modality, text_vocab_size))
  guided = null_inputs is not None
  if guided:
    inputs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), inputs,
                                    null_inputs)
  encoded = encode(model, params, inputs)
  if options.method == DecodeMethod.BEAM:
    return _beam_search(model, params, encoded, modality, options, allowed_v, length)
  return _greedy_or_sample(model, params, encoded, modality, options, allowed_v, rng, length,
                           guided)


def generate(model: UnifiedIOModel, params, inputs: Mapping[str, Mapping[str, Any]],
             modality: Union[Modality, str], options: DecodeOptions = DecodeOptions(),
             rng: Optional[jax.Array] = None, text_vocab_size: Optional[int] = None
             ) -> Generated:
  """Generates one `modality` target (a Modality or its value) for each example of `inputs`
  (batch["inputs"]).

  `text_vocab_size`: the tokenizer's size, so text never produces a padded row.
  `options.guidance_scale` != 1 (image / audio, greedy or sample) runs the prompt and its null
  twin (`null_prompt_inputs`) side by side and mixes their logits.
  """
  targets = model.cfg.target_modalities
  if modality not in targets:
    raise ValueError(f"this model generates {[m.value for m in targets]}, "
                     f"not {getattr(modality, 'value', modality)!r}")
  modality = Modality(modality)
  guided = options.guidance_scale != 1.0
  if guided and modality == Modality.TEXT:
    raise ValueError("classifier-free guidance is for image and audio targets")
  if guided and options.method == DecodeMethod.BEAM:
    raise ValueError("classifier-free guidance works with greedy or sample decoding, not beam")
  if options.method == DecodeMethod.SAMPLE and rng is None:
    raise ValueError("sampling needs an rng")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  null_inputs = null_prompt_inputs(inputs) if guided else None
  return _generate(model, params, inputs, modality, options, rng, null_inputs, text_vocab_size)


def example_losses(model: UnifiedIOModel, params, batch) -> jax.Array:
  """[B]: each example's own loss, exactly `model.loss_fn` on a batch of that example alone
  (with pair packing: of the same model unpacked)."""
  outputs = model.outputs(params, batch)
  return sum(_per_example_loss(model, out) for out in outputs.values())


def _per_example_loss(model: UnifiedIOModel, out) -> jax.Array:
  """[B]: `modality_loss` of each example of one target's output on its own."""
  return jax.vmap(lambda l, t, m: modality_loss(l[None], t[None], m[None],
                                                model.cfg.trunk.z_loss))(
      out.logits, out.targets, out.loss_mask)


def target_log_likelihood(model: UnifiedIOModel, params, batch) -> jax.Array:
  """[B]: each example's log-likelihood of its targets, sum over every counted target token of
  every target modality (what seqio's score metric functions take as `scores`)."""
  total = 0.0
  for out in model.outputs(params, batch).values():
    log_probs_btv = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
    picked_bt = jnp.take_along_axis(log_probs_btv, out.targets[..., None].astype(jnp.int32),
                                    axis=-1)[..., 0]
    total = total + jnp.sum(picked_bt * (out.loss_mask > 0), axis=-1)
  return total


@functools.partial(jax.jit, static_argnums=(0,))
def score_options(model: UnifiedIOModel, params, inputs, option_targets_bnt: jax.Array
                  ) -> jax.Array:
  """[B, N] losses of N text answer options per example (lower = more likely; the answer is the
  argmin). `option_targets_bnt`: EOS-terminated token ids, 0-padded. Encodes each example once."""
  batch, num_options, length = option_targets_bnt.shape
  targets_xt = option_targets_bnt.reshape(batch * num_options, length).astype(jnp.int32)
  mask_xt = (targets_xt != 0).astype(jnp.int32)
  text = {"inputs": jnp.concatenate([jnp.zeros_like(targets_xt[:, :1]), targets_xt[:, :-1]], 1),
          "targets": targets_xt, "mask": mask_xt, "loss_mask": mask_xt}

  def run(module: UnifiedIONetwork):
    encoded = module.encode(inputs)
    tiled = jax.tree_util.tree_map(
        lambda a: jnp.repeat(a, num_options, axis=0) if a is not None else a, encoded)
    return module.decode({Modality.TEXT.value: text}, tiled)[Modality.TEXT.value]

  out = model.inference_module.apply({"params": params}, method=run)
  return _per_example_loss(model, out).reshape(batch, num_options)


__all__ = ["DecodeMethod", "DecodeOptions", "Generated", "allowed_tokens", "generate",
           "example_losses", "target_log_likelihood", "score_options", "null_prompt_inputs",
           "target_length"]
