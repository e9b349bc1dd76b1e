"""Where the files Esker ships are found at run time: the default esker.yaml, the environments' lock files
(images/), the course and demo notebooks, and the course merge script the notebook images carry.

Each has an explicit ``ESKER_*`` variable; without it, the copy in the package's ``data/`` folder (links
into the source tree, copied into a built wheel). Layer 0: nothing of Esker is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def _shipped(variable: str, name: str) -> Path:
    return Path(os.environ.get(variable) or DATA / name)


def default_config() -> Path:
    """$ESKER_CONFIG, else the shipped esker.yaml."""
    return _shipped("ESKER_CONFIG", "esker.yaml")


def images_dir() -> Path:
    """$ESKER_IMAGES_DIR, else the shipped images/ (one folder per environment, with its lock files)."""
    return _shipped("ESKER_IMAGES_DIR", "images")


def notebooks_dir() -> Path:
    """$ESKER_NOTEBOOKS_DIR, else the shipped notebooks/: relative ``content.path`` of courses start here."""
    return _shipped("ESKER_NOTEBOOKS_DIR", "notebooks")


def course_merge_script() -> Path:
    """The stdlib-only merge script of the esker-client package (the same file the images install)."""
    return images_dir() / "esker-client" / "src" / "esker_client" / "course_merge.py"


# The shipped default config, whatever $ESKER_CONFIG says (tests and docs compare against it).
SHIPPED_CONFIG = DATA / "esker.yaml"
