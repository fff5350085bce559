"""What Snakemake's workflow and jobs mean for the plugin: job specs and arguments, rule
settings, sources, deploy scope, validation, payloads.
"""
