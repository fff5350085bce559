"""A job's life and an instance's life, each a state machine defined as data, and the driver
that moves a job through its machine.
"""
