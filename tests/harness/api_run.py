"""Run a workflow through Snakemake's Python API, as a library caller would (issue 28).

The differential harness starts this file as a script (``python api_run.py ...``) in a
directory other than the workflow's: the working directory reaches Snakemake only as the
API's ``workdir=`` (with the Snakefile's absolute path), the way Snakemake's own test base
(``snakemake.common.tests``) and any program embedding Snakemake set it. Self-contained
(no ``tests`` imports), so it runs without the repository on ``sys.path``. Exit code 0 when
the workflow succeeded, 1 when Snakemake raised (its message on stderr).

``--executor local`` runs with ``--cores`` cores; ``--executor vastai`` with ``--jobs``
parallel jobs against ``--api-url`` (the API key from the environment, as the plugin reads
it). ``--storage-prefix``/``--storage-endpoint`` turn on S3 storage mode (credentials from
the environment).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--executor", required=True)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--api-url")
    parser.add_argument("--storage-prefix")
    parser.add_argument("--storage-endpoint")
    parser.add_argument("targets", nargs="*")
    return parser.parse_args(argv)


def storage(args: argparse.Namespace):
    """(StorageSettings, provider settings) for S3 storage mode, or plain local storage."""
    from snakemake.settings import types as settings
    from snakemake_interface_common.plugin_registry.plugin import TaggedSettings

    if not args.storage_prefix:
        return settings.StorageSettings(), None
    from snakemake_storage_plugin_s3 import StorageProviderSettings

    tagged = TaggedSettings()
    tagged.register_settings(StorageProviderSettings(endpoint_url=args.storage_endpoint))
    return (settings.StorageSettings(default_storage_provider="s3",
                                     default_storage_prefix=args.storage_prefix),
            {"s3": tagged})


def executor_settings(args: argparse.Namespace):
    if args.executor != "vastai":
        return None
    from snakemake_executor_plugin_vastai import ExecutorSettings

    return ExecutorSettings(api_url=args.api_url, status_interval=0.2, offline_grace=5)


def run(args: argparse.Namespace) -> None:
    from snakemake import api
    from snakemake.settings import types as settings

    workdir = args.workdir.resolve()
    local = args.executor == "local"
    resources = settings.ResourceSettings(cores=args.cores if local else None,
                                          nodes=None if local else args.jobs)
    storage_settings, provider_settings = storage(args)
    with api.SnakemakeApi(settings.OutputSettings(printshellcmds=True)) as snakemake_api:
        workflow_api = snakemake_api.workflow(
            resource_settings=resources,
            storage_settings=storage_settings,
            storage_provider_settings=provider_settings,
            workdir=workdir,
            snakefile=workdir / "Snakefile",
        )
        dag_api = workflow_api.dag(settings.DAGSettings(targets=frozenset(args.targets)))
        dag_api.execute_workflow(
            executor=args.executor,
            executor_settings=executor_settings(args),
            execution_settings=settings.ExecutionSettings(latency_wait=5),
            remote_execution_settings=settings.RemoteExecutionSettings(
                seconds_between_status_checks=0),
        )


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        run(args)
    except Exception as exc:  # Snakemake's errors: the run failed, say why
        traceback.print_exc()
        print(f"api_run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
