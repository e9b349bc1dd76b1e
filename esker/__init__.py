"""Esker: a notebook data hub for science teams.

The code lives in two packages: ``esker.hub`` (configuration, services, allocation, CLI) in the
repository's ``hub/`` folder and ``esker.spawner`` (catalog, launch plan, backends) in ``spawner/``.
"""

__version__ = "0.1.0"
