"""`python -m snakemake_executor_plugin_vastai`: hands over to the CLI."""

from snakemake_executor_plugin_vastai.cli.main import main

raise SystemExit(main())
