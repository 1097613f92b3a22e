"""Inference on a device mesh, in one process or many: parameters sharded as training shards them,
batches split over `data`, results back as numpy.

  mesh = inference_mesh()          # gin: inference_mesh.model_parallel / .fsdp / .dcn_data
  run = mesh.load_run(checkpoint, dtype="bfloat16")          # restored onto its shardings
  rows = mesh.process_rows(batch_size)        # this process's rows of every global batch
  out = generate_global(mesh, run.model, run.params, mesh.local_rows(batch)["inputs"], target,
                        options, rng, text_vocab_size, batch_size=batch_size, gather=True)

The mesh is (data, model) over every device of every process (`partitioning.make_mesh`); the
logical axis rules are training's (`partitioning.axis_rules(fsdp)`), so a run's parameters take the
layout they trained with. Each process passes the rows of a global batch its devices hold
(`process_rows`; a contiguous block, the whole batch in a one-process run) and gets back numpy:
its own rows (`gather=False`), or every row on every process (`gather=True`, a collective that every
process must call). A global batch size must be a multiple of the data axis (`data_size`): pad
with repeated rows (`pad_rows`) and drop the padding's results.

Every process runs the same calls in the same order (they are collectives); only process 0
should write files or print (`is_writer`).
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unified_io import decoding, partitioning
from unified_io.evaluation import run_loader
from unified_io.model import UnifiedIOModel


@dataclasses.dataclass(frozen=True)
class InferenceMesh:
  """A (data, model) mesh over every device of every process, and whether parameters' embed axis
  is also split over data (`fsdp`)."""
  mesh: Mesh
  fsdp: bool = False

  @property
  def rules(self) -> partitioning.Rules:
    return partitioning.axis_rules(self.fsdp)

  @property
  def data_size(self) -> int:
    """A global batch size must be a multiple of this."""
    return int(self.mesh.shape[partitioning.DATA])

  @property
  def is_writer(self) -> bool:
    """Whether this process writes files and prints (process 0)."""
    return jax.process_index() == 0

  def describe(self) -> str:
    return (f"mesh {dict(self.mesh.shape)}, fsdp={self.fsdp}, process {jax.process_index()} of "
            f"{jax.process_count()}")

  def activated(self) -> contextlib.AbstractContextManager:
    """The mesh and the logical axis rules in effect (every call below enters it itself)."""
    return partitioning.activated(self.mesh, self.rules)

  def load_run(self, checkpoint: str, step: Optional[int] = None, dtype=None, *,
               model_config=None) -> run_loader.Run:
    """`run_loader.load_run` onto this mesh (raises RunLoadError, e.g. for a model axis that does
    not divide the heads)."""
    return run_loader.load_run(checkpoint, step, dtype, model_config=model_config,
                               mesh=self.mesh, fsdp=self.fsdp)

  def check_batch_size(self, batch_size: int) -> None:
    if batch_size % self.data_size:
      raise ValueError(f"{self.describe()}: a batch of {batch_size} rows does not split over "
                       f"data={self.data_size}; make the batch size a multiple of "
                       f"{self.data_size} (pad with repeated rows, `pad_rows`)")

  def process_rows(self, batch_size: int) -> range:
    """The rows of a global batch of `batch_size` this process supplies and gets back."""
    self.check_batch_size(batch_size)
    return partitioning.process_rows(self.mesh, batch_size)

  def local_rows(self, batch, batch_size: Optional[int] = None):
    """This process's rows of a global numpy batch that every process holds whole."""
    batch_size = _rows_in(batch) if batch_size is None else batch_size
    rows = self.process_rows(batch_size)
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[rows.start:rows.stop], batch)

  def to_global(self, local_tree, batch_size: Optional[int] = None):
    """This process's rows -> global arrays split over `data` (`partitioning.global_batch`)."""
    batch_size = self.global_batch_size(local_tree, batch_size)
    self.check_batch_size(batch_size)
    return partitioning.global_batch(local_tree, self.mesh, batch_size)

  def replicated(self, x) -> jax.Array:
    """A value every process holds alike (an rng) as one global array, whole on every device."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(self.replicated(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    sharding = NamedSharding(self.mesh, PartitionSpec())
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  def apply(self, fn: Callable, params, *local_args, batch_size: Optional[int] = None,
            gather: bool = False):
    """`fn(params, *global_args)` under the mesh, each of `local_args` (trees of this process's
    rows) made global first; the outputs (every leaf with the batch axis leading) come back as
    numpy: this process's rows, or with `gather` all rows on every process. `fn` should be
    jitted (it is called as is, so its compile cache persists across calls)."""
    batch_size = self.global_batch_size(local_args[0], batch_size)
    with self.activated():
      global_args = [self.to_global(a, batch_size) for a in local_args]
      out = _on_batch_sharding(self.mesh)(fn(params, *global_args))
      return self.host(out, gather)

  def host(self, global_tree, gather: bool = False):
    """Global arrays split over `data` on their leading axis -> numpy: this process's rows, or
    with `gather` every row on every process (a collective)."""
    if gather:
      if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, global_tree)
      return multihost_utils.process_allgather(global_tree, tiled=True)
    return jax.tree_util.tree_map(_process_rows_of, global_tree)

  def global_batch_size(self, local_tree, batch_size: Optional[int] = None) -> int:
    """`batch_size`, or the global size that this process's rows `local_tree` are part of."""
    if batch_size is not None:
      return batch_size
    local = _rows_in(local_tree)
    # Processes hold equal blocks of rows, unless the data axis lies inside one process's devices
    # (then every process holds every row).
    spans = len({d.process_index for d in self.mesh.devices[:, 0]})
    return local * spans


@gin.configurable
def inference_mesh(model_parallel: int = 1, fsdp: bool = False, dcn_data: int = 1
                   ) -> InferenceMesh:
  """Every device of every process: `model_parallel` devices per model replica (the heads, MLP
  and vocabulary split over them), the rest on `data`; with `fsdp` the parameters' embed axis is
  also split over data; `dcn_data` > 1 spreads `data` over that many TPU slices (multi-slice).
  Training's knobs (`train.model_parallel`, `train.fsdp`, `train.dcn_data`), for inference."""
  return InferenceMesh(partitioning.make_mesh(model=model_parallel, dcn_data=dcn_data), fsdp)


def pad_rows(tree, multiple: int):
  """(tree with its leading axis padded to a multiple of `multiple` by repeating the last row,
  the number of real rows)."""
  rows = _rows_in(tree)
  extra = -rows % multiple

  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x
  return jax.tree_util.tree_map(pad, tree), rows


# ------------------------------------------------------------------------------------------------
# The inference calls, on this process's rows.
# ------------------------------------------------------------------------------------------------
def generate_global(mesh: InferenceMesh, model: UnifiedIOModel, params,
                    local_inputs: Mapping[str, Mapping[str, Any]], modality,
                    options: decoding.DecodeOptions = decoding.DecodeOptions(),
                    rng: Optional[jax.Array] = None, text_vocab_size: Optional[int] = None, *,
                    batch_size: Optional[int] = None, gather: bool = False
                    ) -> decoding.Generated:
  """`decoding.generate` on a global batch: `local_inputs` are this process's rows of
  batch["inputs"] ({modality: {name: array}}); the Generated tokens, lengths and scores come back
  as numpy for those rows, or with `gather` for every row on every process. The same `rng` on
  every process (sampling then matches a one-device run: JAX's random bits do not depend on the
  sharding)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  batch_size = mesh.global_batch_size(local_inputs, batch_size)
  with mesh.activated():
    out = decoding.generate(model, params, mesh.to_global(local_inputs, batch_size), modality,
                            options, mesh.replicated(rng), text_vocab_size)
    return mesh.host(_on_batch_sharding(mesh.mesh)(out), gather)


_example_losses = jax.jit(decoding.example_losses, static_argnums=(0,))


def example_losses_global(mesh: InferenceMesh, model: UnifiedIOModel, params, local_batch, *,
                          batch_size: Optional[int] = None, gather: bool = False) -> np.ndarray:
  """[rows]: `decoding.example_losses` (each example's teacher-forced loss) of a global batch."""
  return mesh.apply(functools.partial(_example_losses, model), params, local_batch,
                    batch_size=batch_size, gather=gather)


def score_options_global(mesh: InferenceMesh, model: UnifiedIOModel, params, local_inputs,
                         local_option_targets_bnt, *, batch_size: Optional[int] = None,
                         gather: bool = False) -> np.ndarray:
  """[rows, N]: `decoding.score_options` (losses of N text answer options) of a global batch."""
  return mesh.apply(functools.partial(decoding.score_options, model), params, local_inputs,
                    local_option_targets_bnt, batch_size=batch_size, gather=gather)


# ------------------------------------------------------------------------------------------------
# Moving rows.
# ------------------------------------------------------------------------------------------------
def _rows_in(tree) -> int:
  return int(np.shape(jax.tree_util.tree_leaves(tree)[0])[0])


@functools.lru_cache(maxsize=None)
def _on_batch_sharding(mesh: Mesh) -> Callable:
  """A jitted identity laying every leaf out split over `data` on its leading axis, whole along
  the others (outputs may come split over `model`, or replicated)."""
  return jax.jit(lambda tree: tree, out_shardings=partitioning.batch_sharding(mesh))


def _process_rows_of(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array split over `data` on its leading axis."""
  rows = partitioning.process_rows(x.sharding.mesh, x.shape[0])
  out = np.empty((len(rows),) + tuple(x.shape[1:]), x.dtype)
  for shard in x.addressable_shards:
    start, stop, _ = shard.index[0].indices(x.shape[0])
    out[start - rows.start:stop - rows.start] = np.asarray(shard.data)
  return out


__all__ = ["InferenceMesh", "example_losses_global", "generate_global", "inference_mesh",
           "pad_rows", "score_options_global"]
