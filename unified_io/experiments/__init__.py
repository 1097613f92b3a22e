"""Runnable experiments built on the library, each with its targets beside it."""
