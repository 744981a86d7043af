"""``python -m baton.proxy``: the same as ``baton proxy``."""

from baton.proxy.cli import proxy_command

proxy_command(prog_name="baton proxy")
