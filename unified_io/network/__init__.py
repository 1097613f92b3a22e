"""The network: pure flax modules, no losses, no data.

  layers/        RMSNorm, RoPE, attention, SwiGLU MLP, token tables, projections
  masks.py       padding, causal, segment and dynamic (row / column / conv) attention masks
  trunk.py       the encoder and decoder stacks (per layer or scanned)
  embedders/     one input embedder per modality (text, image and audio ViTs, histories through
                 the perceiver resampler) and one target embedder per target modality
  vq/            the image VQGAN and the audio ViT-VQGAN (targets as discrete codes, and back)
  encoder_decoder.py   `UnifiedIONetwork`: embedders + trunk + tied heads
  layer_stacking.py    per-layer <-> scanned (stacked) parameter layouts
"""
