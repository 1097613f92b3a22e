"""Whether generated pictures show the objects their prompt asked for, read from colours.

Token accuracy and PSNR do not say whether a generated picture shows the prompted objects: a
picture of the right background with no object in it scores well on both, since objects cover a
small part of it. When objects are drawn in known flat colours on backgrounds far from them (the
built-in world's palette, a segmentation palette), each object can be found in the reference
image as the pixels of its colour, and the generated image is asked for the same pixels.

Each pixel takes the nearest palette colour (object colours and background colours together)
within `max_distance`; a pixel farther than that from every palette colour (an anti-aliased edge,
a blurred decode) takes none. An *object* is an object colour covering at least `min_fraction`
of the reference image (two objects of one colour count as one). Per object:

  iou          of its colour's pixels in the generated image and in the reference
  drawn        iou >= 0.5: the colour at the right place and size (a square where a circle of
               its size was asked overlaps it with IoU 0.79, a triangle or diamond 0.5, so this
               does not certify the shape; `iou` keeps rising as the shape gets right)
  coloured     the colour covers at least a quarter of the reference's count anywhere

  objects_drawn         the fraction of objects drawn
  object_iou            their mean iou
  object_colour_recall  the fraction coloured
  images_drawn          the fraction of images with every object drawn
  stray_colours         per image, the object colours the generated image covers (at least
                        `min_fraction`) that the reference does not have
"""

from typing import Dict, NamedTuple, Sequence

import numpy as np

DRAWN_IOU = 0.5
COLOURED_SHARE = 0.25


class Palette(NamedTuple):
  """RGB colours in [0, 1]: the objects' [K, 3] and the backgrounds' [M, 3]."""
  objects: np.ndarray
  backgrounds: np.ndarray

  @classmethod
  def from_rgb255(cls, objects, backgrounds) -> "Palette":
    objects = np.asarray(objects, np.float32).reshape(-1, 3) / 255.0
    backgrounds = np.asarray(backgrounds, np.float32).reshape(-1, 3) / 255.0
    if not len(objects):
      raise ValueError("drawn objects: the palette has no object colour")
    return cls(objects, backgrounds)


def colour_masks(image_hw3: np.ndarray, palette: Palette, max_distance: float = 0.2
                 ) -> np.ndarray:
  """bool [K, H, W]: the pixels whose nearest palette colour, within `max_distance`, is object
  colour k. `image_hw3`: floats in [0, 1] (uint8 is scaled)."""
  image = np.asarray(image_hw3)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"drawn objects: expected an RGB image [H, W, 3], got shape {image.shape}")
  image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
  colours_c3 = np.concatenate([palette.objects, palette.backgrounds], axis=0)
  distance_hwc = np.linalg.norm(image[:, :, None, :] - colours_c3[None, None], axis=-1)
  nearest_hw = np.argmin(distance_hwc, axis=-1)
  near_enough_hw = np.min(distance_hwc, axis=-1) <= max_distance
  kinds = np.arange(len(palette.objects))[:, None, None]
  return (nearest_hw[None] == kinds) & near_enough_hw[None]


def drawn_objects(generated: Sequence[np.ndarray], references: Sequence[np.ndarray],
                  palette: Palette, min_fraction: float = 0.0025, max_distance: float = 0.2
                  ) -> Dict[str, float]:
  """The module docstring's measures over image pairs (each [H, W, 3] in [0, 1])."""
  if len(generated) != len(references):
    raise ValueError(f"drawn objects: {len(generated)} generated images for "
                     f"{len(references)} references")
  ious, coloured, strays, all_drawn = [], [], [], []
  for i, (gen, ref) in enumerate(zip(generated, references)):
    gen, ref = np.asarray(gen), np.asarray(ref)
    if gen.shape != ref.shape:
      raise ValueError(f"drawn objects: generated image {i} is {gen.shape}, its reference "
                       f"{ref.shape}")
    min_pixels = max(min_fraction * ref.shape[0] * ref.shape[1], 1.0)
    gen_khw = colour_masks(gen, palette, max_distance)
    ref_khw = colour_masks(ref, palette, max_distance)
    ref_count_k = ref_khw.sum(axis=(1, 2))
    gen_count_k = gen_khw.sum(axis=(1, 2))
    present_k = ref_count_k >= min_pixels
    if not present_k.any():
      continue  # a reference without objects (nothing asked for): only strays would count
    inter_k = (gen_khw & ref_khw).sum(axis=(1, 2))
    union_k = (gen_khw | ref_khw).sum(axis=(1, 2))
    iou_k = inter_k[present_k] / union_k[present_k]
    ious.extend(iou_k.tolist())
    coloured.extend((gen_count_k[present_k] >= COLOURED_SHARE * ref_count_k[present_k]).tolist())
    strays.append(int(np.sum((gen_count_k >= min_pixels) & ~present_k)))
    all_drawn.append(bool(np.all(iou_k >= DRAWN_IOU)))
  if not ious:
    raise ValueError(
        f"drawn objects: none of the {len(references)} reference images has an object colour "
        f"covering {min_fraction:.2%} of it; are these the task's palette colours?")
  ious = np.asarray(ious)
  return {"objects_drawn": float(np.mean(ious >= DRAWN_IOU)), "object_iou": float(np.mean(ious)),
          "object_colour_recall": float(np.mean(coloured)),
          "images_drawn": float(np.mean(all_drawn)), "stray_colours": float(np.mean(strays))}


__all__ = ["Palette", "colour_masks", "drawn_objects", "DRAWN_IOU"]
