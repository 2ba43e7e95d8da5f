"""setuptools' build backend, plus `npm ci` of the Data Docs assets that PyPI does not carry.

Why: the Data Docs must render offline (dgnet_pipeline/offline_docs.py), so every script and style sheet
they load is copied from an installed package, never fetched while docs are built. Most come from
pinned PyPI packages (pyproject.toml); bootstrap-table, which fills the results tables, is on npm
only. Running `npm ci` here, when pip builds the project for an editable install (the docs are
built from this tree), keeps the README's one setup command (`pip install -e .`) the whole install:
package.json and package-lock.json beside this file pin the version and its integrity hash.
Without npm the install goes on, with a warning; the docs then lose their tables' contents
(offline_docs says so when it builds them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517/660 hooks this module does not override)

HERE = Path(__file__).resolve().parent


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        print("dgnet: npm not found: bootstrap-table is not installed, the Data Docs tables will be empty "
              "offline", file=sys.stderr)
        return
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=HERE, check=True)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    _npm_ci()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
