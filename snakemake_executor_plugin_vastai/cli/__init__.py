"""``python -m snakemake_executor_plugin_vastai``: one module per subcommand, the timeline,
plan, demo and statechart.
"""
