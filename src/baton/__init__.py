"""Baton: zero-downtime deploys for self-hosted web apps, with its own reverse proxy."""

__version__ = "0.1.0"

# Before any hot-path module is imported: BATON_PURE=1, or compiled modules that no longer
# match their sources, send those imports to the .py files (see baton.build).
from baton.build import install_guard as _install_guard

_install_guard()
