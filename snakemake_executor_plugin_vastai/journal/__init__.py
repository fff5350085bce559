"""The SQLite journal: every job's and every rented instance's transitions, written before
their side effects.

A newcomer's map:

- ``store.py``: :class:`~.store.Journal`, the file, its connection, lock and transactions,
  and the ``meta`` table; import the journal and its errors from here.
- ``runs.py``, ``jobs.py``, ``instances.py``, ``costs.py``: the table groups, one mixin
  each, which ``Journal`` combines; ``base.py`` is what they share (and declares what
  they use of the store), ``errors.py`` the exceptions.
- ``migrations.py``: the schema, one function per version, in order.
- ``schema.py``: renders ``docs/journal-schema.md`` from the migrations.
"""
