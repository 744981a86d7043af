"""Helpers shared by the whole test suite (and the benchmarks): real processes, real sockets.

- `procs`: free ports, child processes with readiness checks, the test `Backend`
- `load`: a bounded load generator that records every failed request
- `h1`: raw-socket HTTP/1.1 for protocol tests
- `backend`: the test backend app itself (run as a child process)
"""
