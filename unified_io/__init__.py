"""Unified-IO 2 in JAX/Flax: one encoder-decoder transformer for text, images, video and audio."""

__version__ = "0.1.0"
