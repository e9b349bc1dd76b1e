"""Functions: publish a notebook function as an authenticated JSON endpoint (docs/functions.md).

Submodules are imported on use; this package imports nothing heavy.
"""
