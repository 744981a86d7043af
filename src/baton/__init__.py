"""Baton: zero-downtime deploys for self-hosted web apps, with its own reverse proxy."""

__version__ = "0.1.0"
