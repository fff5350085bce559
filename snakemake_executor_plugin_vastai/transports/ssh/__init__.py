"""SSH mode: paramiko session, tar upload, safe extraction, detached launch.
"""
