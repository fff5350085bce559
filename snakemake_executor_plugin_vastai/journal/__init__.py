"""The SQLite journal: every job's and every rented instance's transitions, written before
their side effects.
"""
