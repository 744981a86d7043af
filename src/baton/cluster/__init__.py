"""The fleet: several Baton hosts coordinated through etcd (issue 13; see docs/fleet.md).

``etcd`` is the v3 client (JSON gateway), ``keys`` the key layout and the records stored
under it (pure), ``registry`` host registration under a lease, ``election`` leader election
and deploy locks, ``agent`` the per-host loop that converges to the desired state by calling
the local daemon's API.
"""
