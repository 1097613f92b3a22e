"""Interoperation with the official UIO2 release: its config format and parameter layout."""
