"""Bad configuration fails at construction with a `ConfigError` that names the field."""

import json

import numpy as np
import pytest

from unified_io.config import ConfigError, TrunkConfig

from unified_io.presets import SIZES, make_config, trunk_config
from unified_io.interop.release import config_from_release


def _raises_naming(field, fn, *args, **kwargs):
  with pytest.raises(ConfigError) as info:
    fn(*args, **kwargs)
  assert f"`{field}`" in str(info.value), f"{field!r} not named in: {info.value}"
  return info.value


@pytest.mark.parametrize("fn", [trunk_config, make_config])
def test_unknown_size(fn):
  error = _raises_naming("size", fn, "gigantic")
  assert "gigantic" in str(error)


@pytest.mark.parametrize("head_dim", [30, 6, 2])
def test_head_dim_not_multiple_of_4(head_dim):
  _raises_naming("head_dim", make_config, "tiny", head_dim=head_dim)


@pytest.mark.parametrize("field", ["num_heads", "emb_dim", "mlp_dim", "num_encoder_layers"])
def test_zero_sizes(field):
  _raises_naming(field, make_config, "tiny", **{field: 0})


def test_unknown_modality():
  error = _raises_naming("input_modalities", make_config, "tiny", input_modalities=("text", "smell"))
  assert "smell" in str(error)
  _raises_naming("target_modalities", make_config, "tiny", target_modalities=("telepathy",))


def test_input_only_modality_as_target():
  _raises_naming("target_modalities", make_config, "tiny", target_modalities=("image_history",))


def test_unsupported_dtype():
  error = _raises_naming("dtype", make_config, "tiny", dtype="float8")
  assert "float8" in str(error)


def test_good_configs_build():
  for size in SIZES:
    cfg = make_config(size)
    assert cfg.trunk.emb_dim == SIZES[size]["emb_dim"]
  assert make_config("tiny", dtype="bfloat16").trunk.dtype == "bfloat16"


def test_tiny_preset_has_rope_on():
  # The release silently drops RoPE when head_dim == emb_dim; the CI preset must not be that case.
  tiny = trunk_config("tiny")
  assert tiny.head_dim != tiny.emb_dim
  assert tiny.use_rope
  assert tiny.num_heads * tiny.head_dim == tiny.joined_heads_dim


def test_config_is_frozen():
  with pytest.raises(AttributeError):
    TrunkConfig().emb_dim = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# the release's config.json
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release_config(reference_dir):
  with np.load(reference_dir / "uio2_text_golden.npz") as golden:
    return json.loads(str(golden["meta/config_json"]))


def test_release_config_reads(release_config):
  cfg = config_from_release(release_config, ["input_embedders.text.modality_embedding",
                                             "target_embedders.text.modality_embedding"])
  t5 = release_config["t5_config"]
  assert (cfg.trunk.emb_dim, cfg.trunk.num_heads, cfg.trunk.head_dim) == (
      t5["emb_dim"], t5["num_heads"], t5["head_dim"])
  assert cfg.trunk.text_vocab_size == t5["vocab_size"]
  assert [m.value for m in cfg.input_modalities] == ["text"]


def test_release_config_missing_emb_dim(release_config):
  broken = json.loads(json.dumps(release_config))
  del broken["t5_config"]["emb_dim"]
  _raises_naming("t5_config.emb_dim", config_from_release, broken)
  _raises_naming("t5_config.emb_dim", config_from_release, json.dumps(broken))


def test_release_config_unsupported_switch(release_config):
  broken = json.loads(json.dumps(release_config))
  broken["t5_config"]["mlp_activations"] = ["gelu"]
  _raises_naming("t5_config.mlp_activations", config_from_release, broken)


def test_unknown_trunk_field():
  error = _raises_naming("emb_size", make_config, "tiny", emb_size=3)
  assert "emb_dim" in str(error)  # the message lists the real fields


# What gin/models/{large,xl,xxl}.gin set beyond the preset for a TPU/GPU pod run (tests/test_bf16.py
# checks the documented override back to the CPU settings).
POD_SETTINGS = {"large": dict(dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch"),
                "xl": dict(dtype="bfloat16", scan_layers=True, remat_policy="full"),
                "xxl": dict(dtype="bfloat16", scan_layers=True, remat_policy="full")}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_gin_files_select_their_preset(size):
  import gin

  from unified_io.cli.gin_paths import gin_dir
  gin.clear_config()
  gin.add_config_file_search_path(gin_dir())
  try:
    gin.parse_config_files_and_bindings([f"models/{size}.gin"], ["make_config.dtype = 'bfloat16'"])
    cfg = make_config()
  finally:
    gin.clear_config()
  assert cfg.trunk == trunk_config(size, **{**POD_SETTINGS.get(size, {}), "dtype": "bfloat16"})


def test_make_config_supplies_components_for_the_chosen_modalities():
  from unified_io.config import ConfigError
  from unified_io.presets import make_config
  cfg = make_config("tiny", input_modalities=("text", "image", "audio_history"),
                    target_modalities=("text", "image"))
  assert cfg.image_vit is not None and cfg.audio_vit is not None and cfg.audio_history is not None
  assert cfg.image_history is None and cfg.audio_vqgan is None
  # The trunk fits the components: codes + 2 padded to 128, RoPE lengths from the grids.
  assert cfg.trunk.image_vocab_size == 384
  assert cfg.trunk.encoder_max_image_length == 64 and cfg.trunk.decoder_max_image_length == 256
  assert make_config("tiny", input_modalities=("text", "image"),
                     image_vocab_size=512).trunk.image_vocab_size == 512  # overrides win
  release = make_config("large", input_modalities=("text", "image"), target_modalities=("audio",))
  assert release.trunk.audio_vocab_size == 8320 and release.trunk.encoder_max_image_length == 576
  with pytest.raises(ConfigError, match="components"):
    make_config("tiny", input_modalities=("image",), components="huge")
