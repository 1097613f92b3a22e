"""The UIO2 text vocabulary: the release's id layout, round trips, and TF == python."""

import pickle

import numpy as np
import pytest
import tensorflow as tf

from unified_io.data import vocab as V


@pytest.fixture(scope="module")
def vocab():
  return V.get_vocabulary()


def test_special_ids_and_sizes(vocab):
  sp = vocab.tokenizer
  assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 0, 1, 2)
  assert [sp.id_to_piece(i) for i in range(3)] == ["<s>", "</s>", "<unk>"]
  assert vocab.num_sp_pieces == 32000
  assert vocab.vocab_size == 33280
  # 32000 pieces + 1200 extra ids + 16 history + 2 input + 7 prefix tokens.
  assert vocab.tokenizer.GetPieceSize() == 33225
  V.check_layout(vocab)


def test_every_extra_id_text_round_trips(vocab):
  sp = vocab.tokenizer
  for k in range(V.NUM_EXTRA_IDS):
    text = f"<extra_id_{k}>"
    assert vocab.encode(text) == [V.extra_id(k)], text
    assert sp.id_to_piece(V.extra_id(k)) == "▁" + text
    assert vocab.decode([V.extra_id(k)]) == text
  # Reverse order: <extra_id_0> is the highest, right below the history tokens.
  assert V.extra_id(0) == 33199 and V.extra_id(1199) == 32000
  assert V.sentinel_id(0) == 33199 and V.sentinel_id(199) == 33000
  assert V.location_token_id(0) == 32999 and V.location_token_id(999) == 32000
  assert V.LOCATION_ID_RANGE == (32000, 32999)
  for bad in (lambda: V.sentinel_id(200), lambda: V.location_token_id(1000),
              lambda: V.extra_id(-1)):
    with pytest.raises(ValueError, match="outside"):
      bad()


def test_prefix_and_history_tokens_are_one_id_each(vocab):
  assert list(V.PREFIX_TOKENS.values()) == list(range(33218, 33225))
  for name, token in V.PREFIX_TOKENS.items():
    assert vocab.encode(name) == [token], name
    assert vocab.encode(f"{name} what is this")[0] == token
    assert vocab.decode([token]) == name
  assert V.HISTORY_TOKENS["<image_history_1>"] == 33200
  assert V.HISTORY_TOKENS["<audio_history_8>"] == 33215
  assert V.HISTORY_TOKENS["<audio_input>"] == 33217
  for name, token in V.HISTORY_TOKENS.items():
    assert vocab.encode(name) == [token], name


@pytest.mark.parametrize("text", [
    "A red circle above a blue square.",
    "the box is <extra_id_200> <extra_id_310> <extra_id_1199> <extra_id_205> ok",
    "Ünïcödé and numbers 3.1415, emoji 🙂",
    "[Image] [S] draw a cat",
])
def test_round_trip_python_and_tf_agree(vocab, text):
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == text


def test_tf_encoding_inside_a_graph(vocab):
  texts = ["one <extra_id_7> two", "[Audio] [S] a tone"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
  assert [x.numpy().tolist() for x in ds] == [vocab.encode(t) for t in texts]


def test_decode_stops_at_eos_and_maps_padding_rows_to_unk(vocab):
  hello = vocab.encode("hello there")
  assert vocab.decode(hello + [1] + vocab.encode("junk")) == "hello there"
  assert vocab.decode_tf(tf.constant(hello + [1] + vocab.encode("junk"))).numpy() == b"hello there"
  # Ids in the embedding's padding rows are not pieces: they decode as UNK, never crash.
  assert vocab.decode([33230]) == vocab.decode([vocab.unk_id])


def test_other_model_by_path_and_pickle(vocab, tmp_path):
  copy = tmp_path / "tokenizer.model"
  copy.write_bytes(open(vocab.path, "rb").read())
  other = V.get_vocabulary(str(copy))
  assert other == vocab and other.path == str(copy)
  restored = pickle.loads(pickle.dumps(other))
  assert restored.encode("a <extra_id_3>") == vocab.encode("a <extra_id_3>")


def test_non_llama_model_is_refused(tmp_path):
  from sentencepiece import sentencepiece_model_pb2 as sp_pb2
  model = sp_pb2.ModelProto.FromString(open(V.default_model_path(), "rb").read())
  model.pieces[0].piece = "<pad>"
  path = tmp_path / "odd.model"
  path.write_bytes(model.SerializeToString())
  with pytest.raises(ValueError, match="LLaMA-style"):
    V.UIO2Vocabulary(str(path)).tokenizer


def test_ids_fit_the_text_embedding(vocab):
  ids = np.array(vocab.encode("all ids < 33280 <extra_id_0> [Audio] [R]"))
  assert ids.max() < vocab.vocab_size
