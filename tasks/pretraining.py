"""UIO2-style pretraining mixtures over the real datasets (the world's are in tasks/world.py).

`pretrain_mod_real` puts image-text pairs (COCO captions, and the same photos for [R] masked-patch
denoising), audio (Clotho captions), video (MSR-VTT captions) and instructions (Alpaca-style
files) through the mixture of denoisers (`unified_io.data.denoising`), as gin/runs/pretrain_mod.gin
trains it:

  uio2-train --gin_file=models/tiny_multimodal.gin --gin_file=runs/pretrain_mod.gin \
    --gin.MIXTURE_OR_TASK_NAME="'pretrain_mod_real'" --gin.MODEL_DIR=... ...

Each task reads its files from the directories the user configures (docs/data.md); none is
downloaded. No task here has an audio target, so the audio rates of `DenoisingConfig` are unused.
"""

from unified_io.data import registry

REAL_PRETRAIN_RATES = {"coco_captions": 1.0, "coco_image_denoise": 1.0, "clotho_captions": 0.5,
                       "msrvtt_captions": 0.5, "nlp_instructions": 0.5}
registry.add_mixture("pretrain_mod_real", list(REAL_PRETRAIN_RATES.items()), denoising=True,
                     replace=True)
