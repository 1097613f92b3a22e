"""The UIO2 text vocabulary: a SentencePiece model rearranged the way the release lays it out.

Layout (ids), for a 32000-piece LLaMA-style model (the mistral-common default or the user's LLaMA
tokenizer.model that the released weights were trained with):

  0 BOS = PAD, 1 EOS, 2 UNK                 the model's first three pieces reordered (BOS, EOS, UNK)
  3 .. 31999                                the SentencePiece pieces, unchanged
  32000 .. 33199                            `<extra_id_K>`, K = 1199 .. 0 (reverse order, so
                                            `<extra_id_0>` is the highest: id = 33199 - K)
                                              K 0..199     sentinels for span corruption
                                              K 200..1199  location bins q = K - 200
  33200 .. 33215                            `<image_history_i>`, `<audio_history_i>`, i = 1..8,
                                            interleaved
  33216, 33217                              `<image_input>`, `<audio_input>`
  33218 .. 33224                            prefix tokens `[Text] [S]`, `[Text] [R]`,
                                            `[Text] [X]`, `[Image] [S]`, `[Image] [R]`,
                                            `[Audio] [S]`, `[Audio] [R]`
  33225 .. 33279                            padding rows of the embedding table (decode to UNK)

Every added symbol is a USER_DEFINED piece written with a leading "▁" (the release's convention),
so it is one id whenever it starts a word: write `a <extra_id_5> b`, not `a<extra_id_5>b`.
The rearranged model is serialised once and shared by the python tokenizer (`encode`/`decode`) and
the TF one (`encode_tf`/`decode_tf`, usable inside tf.data graphs), so both give the same ids.
"""

import functools
import hashlib
import importlib.resources
import threading
from typing import Dict, Optional, Sequence

import gin
import seqio
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from unified_io import native_logs

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 0, 1, 2
NUM_SENTINELS = 200
NUM_LOCATION_BINS = 1000
NUM_EXTRA_IDS = NUM_SENTINELS + NUM_LOCATION_BINS  # 1200
HISTORY_FRAMES = 8  # `<image_history_i>` / `<audio_history_i>` for i = 1..8
PADDED_VOCAB_SIZE = 33280  # the released embedding tables' row count
PREFIX_NAMES = ("[Text] [S]", "[Text] [R]", "[Text] [X]", "[Image] [S]", "[Image] [R]",
                "[Audio] [S]", "[Audio] [R]")


def default_model_path() -> str:
  """The 32k SentencePiece model shipped inside the `mistral-common` package (Apache-2.0)."""
  path = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
  if not path.is_file():
    raise FileNotFoundError(f"the default tokenizer {path} is missing; is `mistral-common` "
                            "installed? Or pass a SentencePiece model path to get_vocabulary(path)")
  return str(path)


def _added_pieces() -> Sequence[str]:
  """Every symbol appended after the SentencePiece pieces, in id order (without the "▁")."""
  pieces = [f"<extra_id_{k}>" for k in reversed(range(NUM_EXTRA_IDS))]
  for i in range(1, HISTORY_FRAMES + 1):
    pieces += [f"<image_history_{i}>", f"<audio_history_{i}>"]
  pieces += ["<image_input>", "<audio_input>"]
  pieces += [name.replace(" ", "▁") for name in PREFIX_NAMES]
  return pieces


_LOAD_LOCK = threading.Lock()  # SentencePiece proto loading is not thread-safe
_TF_TOKENIZER_LOCK = threading.Lock()  # (one `tf_tokenizer` per vocabulary, made once)


@functools.lru_cache(maxsize=None)
def _rearranged_model(path: str) -> bytes:
  """The SentencePiece model at `path` with the UIO2 layout (module docstring), serialised."""
  with _LOAD_LOCK, tf.io.gfile.GFile(path, "rb") as f:
    model = sp_pb2.ModelProto.FromString(f.read())
  names = [p.piece for p in model.pieces[:3]]
  if names != ["<unk>", "<s>", "</s>"]:
    raise ValueError(f"SentencePiece model {path}: expected the first pieces to be "
                     f"<unk>, <s>, </s> (a LLaMA-style model), got {names}")
  piece_type = sp_pb2.ModelProto.SentencePiece
  unk, bos, eos = (piece_type.FromString(p.SerializeToString()) for p in model.pieces[:3])
  for i, piece in enumerate((bos, eos, unk)):  # BOS = PAD = 0, EOS = 1, UNK = 2, as T5
    model.pieces[i].CopyFrom(piece)
  user_defined = piece_type.USER_DEFINED
  for piece in _added_pieces():
    model.pieces.add(piece="▁" + piece, score=0.0, type=user_defined)
  if len(model.pieces) > PADDED_VOCAB_SIZE:
    raise ValueError(f"SentencePiece model {path}: {len(model.pieces)} pieces with the UIO2 "
                     f"additions do not fit the {PADDED_VOCAB_SIZE}-row embedding table")
  return model.SerializeToString()


class UIO2Vocabulary(seqio.Vocabulary):
  """The UIO2 text vocabulary (module docstring); picklable, so gin can deep-copy it."""

  def __init__(self, path: Optional[str] = None):
    self._path = path or default_model_path()
    self._sp: Optional[spm.SentencePieceProcessor] = None
    self._tf: Optional[tf_text.SentencepieceTokenizer] = None
    super().__init__(extra_ids=0)  # the 1200 extra ids are real pieces of the rearranged model

  # -- loading --------------------------------------------------------------------------------
  @property
  def path(self) -> str:
    return self._path

  @property
  def sp_model(self) -> bytes:
    return _rearranged_model(self._path)

  @property
  def tokenizer(self) -> spm.SentencePieceProcessor:
    if self._sp is None:
      sp = spm.SentencePieceProcessor()
      sp.LoadFromSerializedProto(self.sp_model)
      if (sp.bos_id(), sp.eos_id(), sp.unk_id()) != (BOS_ID, EOS_ID, UNK_ID):
        raise ValueError(f"{self._path}: rearranged ids (bos, eos, unk) = "
                         f"{(sp.bos_id(), sp.eos_id(), sp.unk_id())}, expected (0, 1, 2)")
      self._sp = sp
    return self._sp

  @property
  def tf_tokenizer(self) -> tf_text.SentencepieceTokenizer:
    # One per vocabulary: its model is a resource created eagerly (tf_text lifts it out of any
    # graph being traced) and captured by each tf.data function that tokenises, so every task's
    # pipeline shares it instead of loading the model again (and logging
    # "precompiled_charsmap is empty" each time, from sentencepiece's C++ inside tf_text).
    with _TF_TOKENIZER_LOCK:
      if self._tf is None:
        # (eager, even when first asked inside a function being traced; SentencePiece's C++
        # "precompiled_charsmap is empty" INFO line, written to fd 2 as the model loads, held back)
        with tf.init_scope(), native_logs.held_stderr(verbose=False):
          self._tf = tf_text.SentencepieceTokenizer(model=self.sp_model)
      return self._tf

  def __getstate__(self):
    return {"_path": self._path, "_extra_ids": self._extra_ids}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._sp, self._tf = None, None

  # -- sizes and special ids ------------------------------------------------------------------
  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def _base_vocab_size(self) -> int:
    """Real pieces (33225 for a 32k model); ids from here up to `vocab_size` decode to UNK."""
    return self.tokenizer.GetPieceSize()

  @property
  def vocab_size(self) -> int:
    """Rows of the model's text embedding table."""
    return PADDED_VOCAB_SIZE

  @property
  def num_sp_pieces(self) -> int:
    """Pieces of the underlying SentencePiece model (32000 for LLaMA / mistral)."""
    return self._base_vocab_size - len(_added_pieces())

  # -- encode / decode ------------------------------------------------------------------------
  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.EncodeAsIds(s)

  def _decode(self, ids) -> str:
    return self.tokenizer.DecodeIds([int(i) for i in ids])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.tf_tokenizer.tokenize(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.tf_tokenizer.detokenize(ids)

  def __eq__(self, other) -> bool:
    return isinstance(other, UIO2Vocabulary) and self.sp_model == other.sp_model

  def __hash__(self) -> int:
    return hash(self._path)

  def __str__(self) -> str:
    md5 = hashlib.md5(self.sp_model).hexdigest()[:8]
    return f"UIO2Vocabulary(path={self._path}, pieces={self._base_vocab_size}, md5={md5})"


@gin.configurable
def get_vocabulary(path: Optional[str] = None) -> UIO2Vocabulary:
  """The vocabulary of a SentencePiece model (default: mistral-common's 32k model).

  Gin: `get_vocabulary.path = "/path/to/llama/tokenizer.model"` for the released weights.
  """
  return _cached_vocabulary(path or default_model_path())


@functools.lru_cache(maxsize=None)
def _cached_vocabulary(path: str) -> UIO2Vocabulary:
  return UIO2Vocabulary(path)


# ------------------------------------------------------------------------------------------------
# Fixed ids. They depend only on the 32000-piece base size, which the LLaMA and mistral models
# share; `check_layout` verifies a vocabulary against them.
# ------------------------------------------------------------------------------------------------
_SP_PIECES = 32000
_EXTRA_TOP = _SP_PIECES + NUM_EXTRA_IDS - 1  # id of <extra_id_0> (33199)


def extra_id(k: int) -> int:
  """Id of `<extra_id_k>`, k in [0, 1200)."""
  if not 0 <= k < NUM_EXTRA_IDS:
    raise ValueError(f"extra id {k} is outside [0, {NUM_EXTRA_IDS})")
  return _EXTRA_TOP - k


def sentinel_id(i: int) -> int:
  """Id of span-corruption sentinel i (`<extra_id_i>`, i in [0, 200))."""
  if not 0 <= i < NUM_SENTINELS:
    raise ValueError(f"sentinel {i} is outside [0, {NUM_SENTINELS})")
  return extra_id(i)


def location_token_id(q: int) -> int:
  """Id of location bin q (`<extra_id_{200 + q}>`, q in [0, 1000))."""
  if not 0 <= q < NUM_LOCATION_BINS:
    raise ValueError(f"location bin {q} is outside [0, {NUM_LOCATION_BINS})")
  return extra_id(NUM_SENTINELS + q)


def _added_id(name: str) -> int:
  return _SP_PIECES + list(_added_pieces()).index(name)


PREFIX_TOKENS: Dict[str, int] = {name: _added_id(name.replace(" ", "▁")) for name in PREFIX_NAMES}
HISTORY_TOKENS: Dict[str, int] = {
    name: _added_id(name) for name in _added_pieces()
    if name.startswith(("<image_history_", "<audio_history_", "<image_input", "<audio_input"))}
LOCATION_ID_RANGE = (location_token_id(NUM_LOCATION_BINS - 1), location_token_id(0))  # inclusive


def check_layout(vocab: UIO2Vocabulary) -> None:
  """Raise unless `vocab` has the fixed ids above (i.e. a 32000-piece base model)."""
  if vocab.num_sp_pieces != _SP_PIECES:
    raise ValueError(f"{vocab.path}: {vocab.num_sp_pieces} SentencePiece pieces; the UIO2 "
                     f"layout (location and prefix token ids) assumes {_SP_PIECES}")
