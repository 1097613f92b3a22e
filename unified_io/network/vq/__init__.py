"""Frozen tokenizers that turn image and audio targets into discrete codes, and codes back."""
