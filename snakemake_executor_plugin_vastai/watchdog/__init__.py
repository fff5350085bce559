"""The instance-side watchdog: ends an instance's billing when no run of ours is left to
(see agent.py); how it gets onto an instance (install.py); the run's heartbeat (feeder.py)."""
