"""Turning seqio task outputs into model batches."""
