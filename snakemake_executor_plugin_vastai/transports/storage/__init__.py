"""Storage mode: data through a bucket, no SSH.
"""
