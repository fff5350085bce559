"""A local Vast.ai: REST API, marketplace, instances as SSH sandboxes, faults, ground truth.

Modules, one concern each:

- ``server``: ``SimConfig`` and the ``Simulator`` facade (start, stop, truth, faults).
- ``api``: HTTP server, routing, auth, rate limiting, service faults, request counts.
- ``routes``: what each REST endpoint does; ``listing``: the paged v1 instance listing.
- ``exchanges``: a byte-for-byte record of API exchanges (for the contract test).
- ``catalog``: the seeded built-in offer catalogue, or offers loaded from JSON.
- ``market``: offer availability, search (filters, order, limit) and renting.
- ``query``: evaluation of ``{field: {op: value}}`` filters and orderings.
- ``fleet``: the account's instances and SSH keys, tying market and faults together.
- ``instances``: one instance's lifecycle, processes, logs and billing clock.
- ``timeline``: the per-instance scheduler.
- ``faults``: the fault plan (every kind documented there).
- ``sandbox``/``sshd``: the process side and the SSH server of an instance.
- ``cli``: the ``simulate`` command; ``testing``: pytest fixtures.

How closely it follows Vast.ai: where the published OpenAPI description speaks (bodies,
field types, error answers, the per-endpoint rate limits of its 429 examples, the
statuses that never return to ``running``), the simulator does what it says, and
``tests/simulator/test_contract.py`` checks every exchange the plugin makes against it.
Where it is silent, the choices are written down in ``api.py``, ``listing.py`` and
``faults.py``.

Importing this package is cheap; ``from ...simulator.server import Simulator`` pulls in
the rest (asyncssh included).
"""
