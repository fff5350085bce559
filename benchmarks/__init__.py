"""Benchmarks of the Vast.ai executor plugin against the bundled simulator.

Run ``python benchmarks/run.py [--quick] [--only NAME,...] [--json PATH]``; see
``benchmarks/README.md`` for what each figure means and how it is computed.
"""
