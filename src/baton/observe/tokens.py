"""The environment variables that carry the observe endpoints' bearer tokens.

A module of its own so the command line can name them in its help without importing the
endpoints' aiohttp servers (every ``baton`` command would pay for that import at start-up).
"""

from __future__ import annotations

METRICS_TOKEN_ENV = "BATON_METRICS_TOKEN"
DASHBOARD_TOKEN_ENV = "BATON_DASHBOARD_TOKEN"
