"""The release's parameter layout <-> our flax parameter tree.

The release (`allenai/uio2-*` weights; the golden files' `param/*`) names tensors like
`encoder.layers_0.attention.query.weight` in torch layouts; our tree has
`encoder/layers_0/attention/query/kernel`. The translation is driven by OUR tree: for each of our
parameters we generate the release names it may have, take the one present, and infer the layout
change from the two shapes. Every parameter we have must be found with a compatible shape; release
tensors we do not use are returned so callers can report them.

Names: our path joined with "." after mapping the top-level prefix (PREFIXES); a segment `x_3` may
be `x.3` in the release (torch ModuleList); a leaf may be `<module>.<leaf>` or `<module>_<leaf>`
(`attn.query_in_proj_weight`). Leaf names: kernel -> weight; scale -> scale (RMSNorm) or weight
(LayerNorm); embedding -> weight; everything else keeps its name.

Layouts (torch -> ours): 2D weights of linear layers [out, in] -> kernel [*in, *out] (transposed,
then reshaped: attention kernels are [D, H, K] and [H, K, D]); 4D conv weights [out, in, kh, kw]
(and ConvTranspose2d's [in, out, kh, kw]) -> transpose(2, 3, 1, 0); everything else as is.
"""

import itertools
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np


class CheckpointError(ValueError):
  """A release checkpoint lacks a tensor we need, or has one of the wrong shape."""


# Our top-level module name -> the release's prefixes for it, most likely first.
PREFIXES = {
    "vits_image_vit": ("input_embedders.image.image_encoder.vision_transformer",
                  "input_embedders.image_history.image_encoder.vision_transformer"),
    "vits_audio_vit": ("input_embedders.audio.image_encoder.vision_transformer",
                  "input_embedders.audio_history.image_encoder.vision_transformer"),
}
_LEAF_NAMES = {"kernel": ("weight",), "scale": ("scale", "weight"), "embedding": ("weight",)}
Path = Tuple[str, ...]


def _flatten(tree: Mapping, prefix: Path = ()) -> Dict[Path, object]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: Mapping[Path, object]) -> Dict:
  tree: Dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _head_prefixes(head: str) -> Tuple[str, ...]:
  if head in PREFIXES:
    return PREFIXES[head]
  for group in ("token_embedders_", "input_embedders_", "target_embedders_"):
    if head.startswith(group):
      modality = head[len(group):]
      if group == "token_embedders_":
        return (f"{modality}_token_embedder",)
      return (f"{group[:-1]}.{modality}",)
  return (head,)


def _segment_variants(segment: str) -> Tuple[str, ...]:
  stem, _, index = segment.rpartition("_")
  return (segment, f"{stem}.{index}") if stem and index.isdigit() else (segment,)


def candidate_names(path: Path, prefix: Optional[str] = None) -> List[str]:
  """Release names one of our parameter paths may have, most likely first."""
  heads = (prefix,) if prefix is not None else _head_prefixes(path[0])
  body = path if prefix is not None else path[1:]
  modules, leaf = body[:-1], body[-1]
  leaf_names = _LEAF_NAMES.get(leaf, (leaf,))
  names = []
  for head in heads:
    for segments in itertools.product(*(_segment_variants(s) for s in modules)):
      base = ".".join((head,) + segments) if head else ".".join(segments)
      for leaf_name in leaf_names:
        names.append(f"{base}.{leaf_name}" if base else leaf_name)
        if segments:  # `attn.query_in_proj` + `weight` -> `attn.query_in_proj_weight`
          names.append(f"{base}_{leaf_name}")
  return names


def _to_ours(tensor: np.ndarray, path: Path, shape: Tuple[int, ...], name: str) -> np.ndarray:
  shape = tuple(shape)
  if path[-1] == "kernel" and tensor.ndim == 4:
    out = tensor.transpose(2, 3, 1, 0)
  elif path[-1] == "kernel" and tensor.ndim == 2:
    out = tensor.T
  else:
    out = tensor
  if out.shape == shape:
    return out
  if path[-1] == "kernel" and tensor.ndim == 2 and _split_in_out(shape, tensor.shape) is not None:
    return out.reshape(shape)
  raise CheckpointError(f"release tensor `{name}` has shape {tuple(tensor.shape)}, expected "
                        f"{_expected_release_shape(path, shape)} for our parameter "
                        f"{'/'.join(path)} {shape}")


def _expected_release_shape(path: Path, shape: Tuple[int, ...]) -> str:
  if path[-1] != "kernel":
    return str(shape)
  if len(shape) == 4:
    return str((shape[3], shape[2], shape[0], shape[1]))
  if len(shape) == 2:
    return str((shape[1], shape[0]))
  splits = {(int(np.prod(shape[n:])), int(np.prod(shape[:n]))) for n in range(1, len(shape))}
  return " or ".join(str(s) for s in sorted(splits))


def _split_in_out(shape: Tuple[int, ...], torch_shape: Tuple[int, ...]) -> Optional[int]:
  """How many leading dims of our kernel are the input ([out, in] torch weight), if any fit."""
  for n_in in range(1, len(shape)):
    if int(np.prod(shape[:n_in])) == torch_shape[1] and int(np.prod(shape[n_in:])) == torch_shape[0]:
      return n_in
  return None


def release_to_params(release: Mapping[str, np.ndarray], abstract_params: Mapping,
                      prefix: Optional[str] = None) -> Tuple[Dict, List[str]]:
  """Our parameter tree (NumPy float32) from release tensors, and the release names left unused.

  `abstract_params` is our tree of shapes (e.g. unboxed `jax.eval_shape(model.init, ...)`);
  `release` maps state_dict keys to arrays and is read one tensor at a time. With `prefix`, the
  tree is one module's (e.g. a standalone ViT) and every name starts with that prefix.
  """
  flat, used = {}, set()
  for path, leaf in _flatten(abstract_params).items():
    names = candidate_names(path, prefix)
    name = next((n for n in names if n in release), None)
    if name is None:
      raise CheckpointError(f"release tensor `{names[0]}` is missing (needed for our parameter "
                            f"{'/'.join(path)} {tuple(leaf.shape)})")
    flat[path] = _to_ours(np.asarray(release[name], dtype=np.float32), path, leaf.shape, name)
    used.add(name)
  return _unflatten(flat), sorted(set(release) - used)


def params_to_release(params: Mapping, release_shapes: Mapping[str, Tuple[int, ...]],
                      prefix: Optional[str] = None) -> Dict[str, np.ndarray]:
  """The inverse of `release_to_params` for the names in `release_shapes` (e.g. gradients)."""
  out = {}
  for path, value in _flatten(params).items():
    name = next((n for n in candidate_names(path, prefix) if n in release_shapes), None)
    if name is None:
      continue
    value, torch_shape = np.asarray(value), tuple(release_shapes[name])
    if path[-1] == "kernel" and len(torch_shape) == 4:
      value = value.transpose(3, 2, 0, 1)
    elif path[-1] == "kernel" and len(torch_shape) == 2:
      n_in = _split_in_out(value.shape, torch_shape) or 1
      value = value.reshape(int(np.prod(value.shape[:n_in])), -1).T
    out[name] = value.reshape(torch_shape)
  return out
