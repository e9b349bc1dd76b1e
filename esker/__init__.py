"""Esker: a notebook data hub for science teams.

One package in layers (README.md, "Layout"): units, core (catalog -> launch plan), state and clients,
services and backends, the hub application, entry points.
"""

__version__ = "0.1.0"
