"""The executor Snakemake drives: thin glue between Snakemake and a run (``run/``).

Snakemake calls ``run_job`` for each ready job, ``check_active_jobs`` on its status
thread, ``cancel_jobs`` on Ctrl-C and ``shutdown`` at the end; each hands over to the
:class:`~.run.runtime.Run` that ``run/startup.py`` builds. Everything heavy is imported
on first use: this module is imported on every ``snakemake`` start.
"""

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

if TYPE_CHECKING:
    from .run.runtime import Run

STATUS_CHECK_SECONDS = 0.2  # check_active_jobs reads memory only; no API call


class Executor(RemoteExecutor):
    """Thin glue between Snakemake and a :class:`~.runtime.Run`."""

    def __post_init__(self) -> None:
        from .vastai.api import skip_serverless_client

        skip_serverless_client()
        if os.environ.get("SNAKEMAKE_VASTAI_PLAN"):  # `... plan`: report, rent nothing
            from .cli.plan import write_plan_and_stop

            write_plan_and_stop(self)
        from .run.startup import start_run

        self.next_seconds_between_status_checks = STATUS_CHECK_SECONDS
        self.run: Run = start_run(self)
        self._signals_installed = False

    async def sleep(self) -> None:
        """Status checks read memory only, so they run often from the very first one.

        Snakemake starts its status thread before ``__post_init__`` could lower
        the interval, so the base class would sleep its default 10 s first.
        """
        import asyncio

        await asyncio.sleep(STATUS_CHECK_SECONDS)

    def run_jobs(self, jobs: list[JobExecutorInterface]) -> None:
        self._install_signal_handlers()
        super().run_jobs(jobs)

    def additional_general_args(self) -> str:
        """The remote job runs in its job directory, where the sources are unpacked as they
        lie below the local working directory. Snakemake passes its own ``--directory``
        (``wf`` from the command line, an absolute local path from the API) to every
        remote job; the last ``--directory`` wins, so this one puts the job back there."""
        return "--directory ."  # a string: join_cli_args takes strings, despite its docs

    def get_job_args(self, job: JobExecutorInterface, **kwargs: Any) -> str:
        """Snakemake's job arguments, but shell-quoted (see jobargs.py)."""
        from .workflow.jobargs import job_args

        return job_args(job, cores=kwargs.get("cores", self.cores),
                        unneeded_temp_files=self.workflow.dag.get_unneeded_temp_files(job))

    def run_job(self, job: JobExecutorInterface) -> None:
        model = self.run.submit(job)
        self.report_job_submission(SubmittedJobInfo(job=job, external_jobid=model.job_id))

    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]):
        from .run.redaction import scrub
        from .run.terminal import sanitise
        from .transports.storage.setup import forget_stale_answers
        from .workflow.checkpoints import bring_home

        for info in active_jobs:
            driver = self.run.drivers.get(str(info.external_jobid))
            if driver is None or not driver.done.is_set():
                yield info
                continue
            model = driver.m
            if model.work_succeeded:
                # Outputs are home; an unconfirmed destroy fails the run at shutdown
                # instead (reporting an error here would make Snakemake delete them).
                if self.run.storage is not None:
                    forget_stale_answers(info.job)  # else directory() outputs look missing
                    failure = await bring_home(info.job)
                    if failure:
                        self.report_job_error(info, msg=scrub(sanitise(failure)))
                        continue
                self.report_job_success(info)
            else:
                # Snakemake appends its own sentence to msg without a separator.
                msg = (model.failure or f"job {model.state.value}").rstrip("\n") + "\n"
                self.report_job_error(info, msg=scrub(sanitise(msg)),
                                      aux_logs=[model.log_path])

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        self.run.cancel_all()

    def shutdown(self) -> None:
        super().shutdown()
        self.run.finish()
        pending = self.run.close("finished")
        if pending:
            from snakemake_interface_common.exceptions import WorkflowError

            raise WorkflowError(pending)

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGHUP behave like Ctrl-C: Snakemake cancels, we destroy.

        Snakemake's scheduler installs its own SIGTERM handler ("finish running
        jobs") after creating the executor; for rented GPUs, waiting is the
        wrong answer, so ours goes in at the first submission.
        """
        if self._signals_installed or threading.current_thread() is not threading.main_thread():
            return
        self._signals_installed = True

        def interrupt(signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
