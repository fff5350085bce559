"""``snakemake-vastai``: one module per subcommand, the timeline,
plan, demo and statechart.
"""
