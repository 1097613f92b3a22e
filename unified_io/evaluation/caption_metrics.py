"""Caption metrics: corpus BLEU-1..4 and CIDEr-D, written from their papers' definitions.

Both take `predictions` (one string per example) and `references` (per example, a list of
reference strings, or one string). Text is compared after `tokenize_caption`: lowercase, words of
letters and digits (apostrophes inside a word kept), punctuation dropped — the effect the COCO
caption toolkit gets from its PTB tokenizer followed by punctuation removal.

BLEU (Papineni et al. 2002), corpus level:
  p_n = sum over examples of the n-gram counts of the candidate clipped by the largest count of
  that n-gram in any one reference, divided by the candidate's n-gram total over the corpus;
  BP = 1 if c > r else exp(1 - r / c), c = total candidate length, r = sum over examples of the
  reference length closest to the candidate's (the shorter on a tie);
  BLEU-N = BP * exp(mean_{n <= N} log p_n). No smoothing: a p_n of 0 gives BLEU-N = 0.

CIDEr-D (Vedantam et al. 2015), as the COCO toolkit computes it:
  each sentence becomes, per n in 1..4, a vector g^n of n-gram weights tf * idf with tf the raw
  count of the n-gram in the sentence and idf = log(E / max(1, df)), E the number of examples and
  df the number of examples whose references contain the n-gram (each example's reference set is
  one document, so idf is over the evaluated reference corpus);
  CIDEr-D_n(c, s) = sum_k min(g_k(c), g_k(s)) g_k(s) / (|g(c)| |g(s)|)   (0 if either norm is 0)
                   * exp(-(len(c) - len(s))^2 / (2 sigma^2)),  sigma = 6;
  an example's score = 10 * mean over references s of mean over n of CIDEr-D_n; the corpus score
  is the mean over examples. With one example every idf is log(1) = 0 and the score is 0.
"""

import collections
import math
import re
from typing import Counter, Dict, List, Sequence, Tuple, Union

MAX_ORDER = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0

References = Union[str, Sequence[str]]
NGram = Tuple[str, ...]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize_caption(text: str) -> List[str]:
  """Lowercased words of letters/digits; punctuation and underscores separate and are dropped."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return _WORD.findall(str(text).lower())


def reference_lists(metric: str, predictions: Sequence, references: Sequence) -> List[List[str]]:
  """Checks one prediction per example and >= 1 reference each; returns the references as lists."""
  if len(predictions) == 0:  # pylint: disable=g-explicit-length-test  (numpy arrays too)
    raise ValueError(f"{metric}: no predictions given; pass one prediction per example")
  if len(predictions) != len(references):
    raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} reference "
                     f"entries; pass one entry (a string or a list of strings) per example")
  out = []
  for i, refs in enumerate(references):
    refs = [refs] if isinstance(refs, (str, bytes)) else list(refs)
    if not refs:
      raise ValueError(f"{metric}: example {i} has no references; every example needs at least "
                       f"one reference text")
    out.append([r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in refs])
  return out


def ngram_counts(words: Sequence[str], n: int) -> Counter[NGram]:
  """Counts of the n-grams of a word sequence."""
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


# ---------------------------------------------------------------- BLEU

def _closest_length(candidate_len: int, reference_lens: Sequence[int]) -> int:
  return min(reference_lens, key=lambda r: (abs(r - candidate_len), r))


def bleu(predictions: Sequence[str], references: Sequence[References],
         max_order: int = MAX_ORDER) -> Dict[str, float]:
  """Corpus BLEU-1..max_order -> {"bleu_1": .., ..., "bleu_4": ..} (see the module docstring)."""
  refs_per_example = reference_lists("bleu", predictions, references)
  matches = [0] * max_order
  totals = [0] * max_order
  candidate_len = reference_len = 0
  for prediction, refs in zip(predictions, refs_per_example):
    words = tokenize_caption(prediction)
    ref_words = [tokenize_caption(r) for r in refs]
    candidate_len += len(words)
    reference_len += _closest_length(len(words), [len(r) for r in ref_words])
    for n in range(1, max_order + 1):
      counts = ngram_counts(words, n)
      most_in_one_ref = collections.Counter()
      for r in ref_words:
        most_in_one_ref |= ngram_counts(r, n)  # | keeps the max count of each n-gram
      matches[n - 1] += sum(min(c, most_in_one_ref[g]) for g, c in counts.items())
      totals[n - 1] += sum(counts.values())

  if candidate_len == 0:
    return {f"bleu_{n}": 0.0 for n in range(1, max_order + 1)}
  brevity = 1.0 if candidate_len > reference_len else math.exp(1 - reference_len / candidate_len)
  scores = {}
  log_sum = 0.0
  for n in range(1, max_order + 1):
    if matches[n - 1] == 0 or log_sum == -math.inf:
      log_sum = -math.inf
      scores[f"bleu_{n}"] = 0.0
      continue
    log_sum += math.log(matches[n - 1] / totals[n - 1])
    scores[f"bleu_{n}"] = brevity * math.exp(log_sum / n)
  return scores


# ---------------------------------------------------------------- CIDEr-D

class _Sentence:
  """A sentence's tf-idf vectors per n-gram order, their norms and its length in words."""

  def __init__(self, words: Sequence[str], idf, max_order: int):
    self.length = len(words)
    self.vectors = []
    self.norms = []
    for n in range(1, max_order + 1):
      vector = {g: c * idf(g) for g, c in ngram_counts(words, n).items()}
      self.vectors.append(vector)
      self.norms.append(math.sqrt(sum(v * v for v in vector.values())))


def _cider_d_pair(candidate: _Sentence, reference: _Sentence, sigma: float) -> float:
  """Mean over n-gram orders of the clipped, length-penalised cosine (not yet scaled by 10)."""
  delta = candidate.length - reference.length
  penalty = math.exp(-delta * delta / (2.0 * sigma * sigma))
  total = 0.0
  for vec_c, vec_r, norm_c, norm_r in zip(candidate.vectors, reference.vectors, candidate.norms,
                                          reference.norms):
    if norm_c == 0 or norm_r == 0:
      continue
    clipped_dot = sum(min(w, vec_r[g]) * vec_r[g] for g, w in vec_c.items() if g in vec_r)
    total += clipped_dot / (norm_c * norm_r) * penalty
  return total / len(candidate.vectors)


def cider_scores(predictions: Sequence[str], references: Sequence[References],
                 max_order: int = MAX_ORDER, sigma: float = CIDER_SIGMA) -> List[float]:
  """CIDEr-D of each example (idf over the whole given corpus), the per-example list."""
  refs_per_example = reference_lists("cider", predictions, references)
  ref_words = [[tokenize_caption(r) for r in refs] for refs in refs_per_example]
  document_freq = collections.Counter()
  for refs in ref_words:
    document_freq.update({g for words in refs for n in range(1, max_order + 1)
                          for g in ngram_counts(words, n)})
  log_examples = math.log(len(ref_words))
  idf = lambda g: log_examples - math.log(max(1, document_freq[g]))

  scores = []
  for prediction, refs in zip(predictions, ref_words):
    candidate = _Sentence(tokenize_caption(prediction), idf, max_order)
    per_ref = [_cider_d_pair(candidate, _Sentence(words, idf, max_order), sigma) for words in refs]
    scores.append(CIDER_SCALE * sum(per_ref) / len(per_ref))
  return scores


def cider(predictions: Sequence[str], references: Sequence[References],
          max_order: int = MAX_ORDER, sigma: float = CIDER_SIGMA) -> Dict[str, float]:
  """Corpus CIDEr-D -> {"cider": mean over examples} (see the module docstring)."""
  scores = cider_scores(predictions, references, max_order, sigma)
  return {"cider": sum(scores) / len(scores)}
