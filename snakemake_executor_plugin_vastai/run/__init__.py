"""One Snakemake run: its composition, start-up, recovery after a crash, liveness, teardown,
warm pool and the instance watcher.
"""
