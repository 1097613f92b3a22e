"""Patchify and valid-first random patch sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.network.embedders.patches import patchify, sample_patches


def test_patchify_is_row_major_and_dh_dw_c_inside():
  img = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  p = np.asarray(patchify(jnp.asarray(img), 2))
  assert p.shape == (2, 6, 12)
  # patch (row 1, col 2) = grid index 1 * 3 + 2, covering pixels rows 2..3, cols 4..5
  np.testing.assert_array_equal(p[1, 5], img[1, 2:4, 4:6, :].reshape(-1))
  with pytest.raises(ValueError, match="not a multiple"):
    patchify(jnp.zeros((1, 5, 6, 3)), 2)


def test_sampling_takes_valid_patches_first_and_keeps_positions():
  patches = jnp.arange(2 * 10 * 1, dtype=jnp.float32).reshape(2, 10, 1)
  valid = jnp.asarray([[1] * 4 + [0] * 6, [1] * 10])
  picked, mask, pos = sample_patches(jax.random.PRNGKey(0), patches, valid, 6)
  picked, mask, pos = map(np.asarray, (picked, mask, pos))
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0])
  assert set(pos[0, :4]) == {0, 1, 2, 3}  # all four valid patches, in some order
  assert mask[1].all() and len(set(pos[1])) == 6
  np.testing.assert_array_equal(picked[..., 0], np.asarray(patches)[np.arange(2)[:, None], pos, 0])
  other = np.asarray(sample_patches(jax.random.PRNGKey(1), patches, valid, 6)[2])
  assert not np.array_equal(other[1], pos[1])  # random order
  with pytest.raises(ValueError, match="only 10"):
    sample_patches(jax.random.PRNGKey(0), patches, valid, 11)
