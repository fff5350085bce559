"""SSH mode: sources and inputs go up over SSH, the job is followed, outputs come home.

Each job works in its own directory on the instance (``JobModel.work_dir``):
with warm instances (``pool.py``) one instance serves several jobs, and a
finished job's outputs stay untouched in their directory. On a reused
instance, the run's source archive and inputs already there with the same
content (a chain's previous output: sha256 checked on the instance) are
hard-linked into the new job's directory instead of being uploaded again; the
earlier jobs' directories, whose outputs are home, are then removed.

Everything here talks to the instance through ``session.py`` and its parts (paramiko). SSH
trouble is retried in place (reconnect with backoff within a budget) and shows
in the journal as ``retry`` transitions (through the driver's narrow port,
``lifecycle/step_port.py``); after a drop the follower resumes at exactly the
bytes already written to the local log.

Each step returns an outcome (``lifecycle/outcomes.py``); the driver writes the job
model and fires the trigger. What only the link needs (the follower's log offset,
since when the host's heartbeat is lost, whether the runtime cap's timer fired)
lives here, on the transport, not on the job model.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ...costs.ledger import ByteMeter
from ...lifecycle.job_machine import Progress
from ...lifecycle.outcomes import (
    Booted,
    Downloaded,
    JobFailure,
    Reattached,
    RunEnded,
    Uploaded,
    crash_point,
    disk_hint,
)
from ...run.backoff import Backoff
from ...run.pool import file_digest
from ...run.recovery import resumable_state
from ...settings import download_cap
from ...vastai.bids import InstanceLost, Preempted
from ...watchdog.install import start_lines, stopped_age_command
from ...workflow import payload
from ..progress import TransferProgress, planned_bytes, terminal_bars
from .channels import Endpoint
from .errors import (
    AuthRejected,
    DownloadTooLarge,
    HostKeyMismatch,
    RemoteError,
    SSHUnavailable,
    UnsafeArchive,
)
from .paths import AllowedPaths
from .session import RemoteSession

if TYPE_CHECKING:
    from ...lifecycle.step_port import StepPort

SSH_RETRY_BUDGET = 180.0  # seconds of SSH trouble tolerated per step
# A re-attach meets an instance that has run for a while: a refused key there is not a key
# still being installed but one the host never got (a run that died between renting and
# attaching it) or lost, and booting again attaches this run's key at once.
REATTACH_AUTH_GRACE = 20.0
_UNSET = object()
REMOTE_DIR = payload.REMOTE_DIR

# What a dying link can raise from deep inside paramiko when the adapter did not
# translate it: treated like SSHUnavailable (reconnect and retry within the budget).
LINK_ERRORS: tuple[type[BaseException], ...] = (EOFError, ConnectionError, TimeoutError)


def onstart_script(public_line: str, watchdog: str = "") -> str:
    """Authorise our run key, keep Vast.ai's auto-tmux out of our SSH sessions, and start
    the instance's watchdog (``watchdog`` holds its start lines; see watchdog/install.py)."""
    key = shlex.quote(public_line)
    lines = ("mkdir -p ~/.ssh && chmod 700 ~/.ssh && "
             f"echo {key} >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys && "
             "touch ~/.no_auto_tmux")
    return f"{lines}\n{watchdog}" if watchdog else lines


class SshTransport:
    """One job's SSH link to its instance."""

    skips_ssh = False

    def __init__(self, steps: StepPort) -> None:
        self.steps = steps
        self.m = steps.m  # read only: the driver writes the job model
        self.p = steps.p
        self.session: RemoteSession | None = None
        self._lock = threading.Lock()
        self.meter = ByteMeter()  # this job's bytes on its instance (ledger.py)
        self.time_up = threading.Event()  # --vastai-max-runtime passed (set by a timer)
        self._log_offset = 0  # bytes of the running process's log already in the local log
        self._log_total = 0  # bytes this job's local log has taken (for the download cap)
        self._cap: object = _UNSET  # the download cap, once known (see _download_cap)
        self._offline_since: float | None = None  # monotonic: the host's heartbeat lost

    # -- renting and booting -------------------------------------------------------------
    def launch(self, label: str) -> dict[str, Any]:
        settings = self.p.settings
        # --vastai-keep-instances hands the instances to the user: no watchdog ends them
        watchdog = (start_lines(settings.api_url, settings.orphan_timeout)
                    if settings.orphan_timeout > 0 and not settings.keep_instances else "")
        return {"onstart": onstart_script(self.p.instances.key.public_line, watchdog),
                "runtype": "ssh_direc ssh_proxy"}

    def prepare_boot(self, instance_id: int) -> None:
        self.p.instances.attach_key(instance_id)

    def ready(self, status: str, row: dict) -> Booted | None:
        """Running and answering SSH (first contact pins the host key)."""
        if status != "running":
            return None
        endpoint = ssh_endpoint(row)
        if endpoint is None:
            return None
        try:
            self._connect(endpoint)
        except SSHUnavailable:
            return None
        return Booted(detail={"host": endpoint.host, "port": endpoint.port},
                      fields={"ssh_host": endpoint.host, "ssh_port": endpoint.port},
                      endpoint=endpoint)

    def after_boot(self, instance_id: int) -> None:
        # From here SSH itself (the follower's heartbeat) says whether the host lives;
        # the listing is consulted again only after SSH trouble.
        self.p.instances.watcher.unwatch(instance_id)

    def resume_status(self, claim: Any) -> Reattached:
        """An earlier run's job on a live instance: its status over SSH (its key, which
        the driver set on the job)."""
        endpoint = ssh_endpoint(claim.row)
        status = None
        if claim.key is not None and endpoint is not None \
                and claim.row.get("actual_status") == "running":
            try:
                status = self.with_ssh("re-attach",
                                       lambda s: s.job_status(self.job_dir),
                                       auth_grace=REATTACH_AUTH_GRACE, endpoint=endpoint)
            except JobFailure as exc:
                self.steps.log("warning", "cannot re-attach over SSH; booting it again",
                               error=str(exc))
        started, exit_code = resumable_state(status)
        return Reattached(status=status, started=started, exit_code=exit_code,
                          endpoint=endpoint)

    @property
    def job_dir(self) -> str:
        """Where the job runs on the instance: its own directory (``JobModel.work_dir``,
        the one warm reuse prunes), or below it under a ``workdir:`` directive."""
        return self.p.spec.workspace.remote_dir(self.m.work_dir)

    def probe_job(self) -> Reattached:
        """How far the job got in its directory, asked over SSH (a resumed job whose
        instance was stopped when the run came back)."""
        status = self.with_ssh("re-attach", lambda s: s.job_status(self.job_dir))
        started, exit_code = resumable_state(status)
        return Reattached(status=status, started=started, exit_code=exit_code,
                          endpoint=self.m.endpoint, stopped_for=self._stopped_for())

    def _stopped_for(self) -> float | None:
        """Seconds since the instance's watchdog stopped it (None: it did not, or no
        answer): only for the ledger, so a failure costs nothing but precision."""
        try:
            done = self.with_ssh("re-attach", lambda s: s.run(stopped_age_command(),
                                                               timeout=30))
            age = float(done.stdout.decode("ascii", "replace").strip())
        except Exception:  # RemoteError, an empty or garbled answer
            return None
        return age if age >= 0 else None

    # -- the steps --------------------------------------------------------------------
    def upload(self) -> Uploaded:
        shipment = self.p.spec.shipment()
        files, linked = self._reuse_on_instance(shipment.files)
        with self._progress("upload", planned_bytes(files)):
            sent = self.with_ssh("upload", lambda s: s.upload(files, self.job_dir))
        self._note_sources(shipment.files)
        return Uploaded(files=len(shipment.files), bytes=sent,
                        already_on_instance=len(linked))

    def run(self, started: bool) -> RunEnded:
        """Launch the job (unless ``started``: a re-attached one) and follow it to its end."""
        self.time_up.clear()
        timer = self._runtime_timer()
        try:
            return self._run(started)
        finally:
            if timer is not None:
                timer.cancel()

    def download(self) -> Downloaded:
        ok = self.m.exit_code == 0
        back = self.p.spec.homecoming(succeeded=ok)
        allowed = AllowedPaths(back.files, back.directories)
        if back.paths:
            try:
                with self._progress("download", self._download_size(back.paths)):
                    self.with_ssh("download", lambda s: s.download(
                        self.job_dir, back.paths, self.p.spec.workspace.workdir,
                        allowed=allowed, max_bytes=self._download_cap(),
                        optional=back.optional))
            except JobFailure:
                if ok:
                    raise
                # the job failed anyway; missing logs must not hide its exit code
        if ok:
            self._note_outputs(back.files)
        return Downloaded(ok=ok, paths=len(back.paths))

    def _download_size(self, paths: list[str]) -> int | None:
        """The download's size, for its progress total: one try on the open session, no
        reconnect (unknown, None, rather than hold the download up on a bad link)."""
        with self._lock:
            session = self.session
        if session is None:
            return None
        try:
            return session.download_size(self.m.work_dir, paths)
        except (SSHUnavailable, RemoteError, *LINK_ERRORS):
            return None

    def clean_for_next(self) -> str | None:
        """End everything the job started (launch.py's sweep); None when the instance is
        provably clean, else why it must not serve another job."""
        try:
            swept = self.with_ssh("clean-up", lambda s: s.sweep(self.job_dir))
        except JobFailure as exc:
            return f"the clean-up after the job failed: {exc}"
        if swept.untagged:
            return "its job was started by an older plugin (its processes cannot be found)"
        if swept.left:
            return f"{swept.left} process(es) the job started survived SIGKILL"
        if swept.gpu_apps:
            return ("a process still holds GPU memory" if swept.gpu_apps > 0
                    else "nvidia-smi could not say whether the GPU is free")
        return None

    def _download_cap(self) -> int | None:
        """The job's download cap, worked out once (the log follower asks per chunk)."""
        if self._cap is _UNSET:
            settings = self.p.settings
            self._cap = download_cap(settings.max_download_bytes,
                                     self.p.spec.rented_disk_gb(settings.offer_settings.disk_gb))
        return self._cap  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            session, self.session = self.session, None
        if session is not None:
            session.close()
        self.flush_bytes()

    # -- the cost ledger and progress (ledger.py, progress.py) ------------------------------
    def flush_bytes(self) -> None:
        """Journal the bytes moved since the last flush, on this job's instance."""
        iid = self.m.instance_id
        if iid is None:
            return
        uploaded, downloaded = self.meter.take()
        try:
            self.p.journal.add_instance_bytes(int(iid), uploaded, downloaded)
        except Exception as exc:  # a busy journal must not fail the job; the next flush
            self.meter.untake(uploaded, downloaded)  # journals these bytes too
            self.steps.log("warning", "could not journal the bytes moved yet", error=str(exc))

    @contextlib.contextmanager
    def _progress(self, direction: str, total: int | None) -> Iterator[TransferProgress]:
        """Report the transfer's progress while it runs, journaling its bytes with each
        progress write (about once a second) and the rest when done."""
        progress = TransferProgress(
            direction, total, log=self.steps.log, journal=self.p.journal,
            job_id=self.m.job_id, instance_id=self.m.instance_id,
            interval=getattr(self.p.settings, "progress_interval", 5.0), meter=self.meter,
            bars=terminal_bars(), label=f"{self.m.rule} {self.m.job_id}")
        self.meter.listener = progress.count
        ok = False
        try:
            yield progress
            ok = True
        finally:
            self.meter.listener = None
            progress.end(ok)
            self.flush_bytes()

    # -- warm instances: what is on the instance already ---------------------------------
    def _reuse_on_instance(self, files: list[tuple[Any, str]]) -> tuple[list, list[str]]:
        """Files to upload, and those hard-linked from earlier jobs' directories instead
        (same content: the source archive of this run, inputs with the same sha256)."""
        warm = self.m.warm
        if warm is None or (warm.sources is None and not warm.files):
            return files, []
        pairs: list[tuple[str, str, str]] = []  # (remote source, rel, sha256 or "")
        for local, rel in files:
            if rel == payload.SOURCES_MEMBER and warm.sources:
                pairs.append((warm.sources, rel, ""))
            elif rel in warm.files and warm.files[rel][1] == file_digest(local):
                pairs.append((warm.files[rel][0], rel, warm.files[rel][1]))
        linked: list[str] = []
        if pairs:
            done = self.with_ssh("link", lambda s: s.run(
                link_command(self.job_dir, pairs), timeout=max(self.p.settings.ssh_timeout,
                                                                   30)))
            if done.rc == 0:
                linked = [line for line in done.stdout.decode(errors="replace").splitlines()
                          if line]
        self._prune(warm)
        return [(local, rel) for local, rel in files if rel not in linked], linked

    def _prune(self, warm: Any) -> None:
        """Earlier jobs' directories go (their outputs are home; linked files live on)."""
        dirs = [d for d in warm.dirs if d != self.m.work_dir]
        if not dirs:
            return
        command = "rm -rf -- " + " ".join(shlex.quote(d) for d in dirs)
        with contextlib.suppress(JobFailure):  # only disk space is at stake
            self.with_ssh("prune", lambda s: s.run(command, timeout=60))
        warm.dirs = [self.m.work_dir]
        warm.files = {}

    def _note_sources(self, files: list[tuple[Any, str]]) -> None:
        warm = self.m.warm
        if warm is None:
            return
        if self.m.work_dir not in warm.dirs:
            warm.dirs.append(self.m.work_dir)
        if any(rel == payload.SOURCES_MEMBER for _, rel in files):
            warm.sources = f"{self.job_dir}/{payload.SOURCES_MEMBER}"

    def _note_outputs(self, paths: list[str]) -> None:
        """Files that came home from this job: a later job's inputs, maybe."""
        warm = self.m.warm
        if warm is None:
            return
        root = self.p.spec.workspace.workdir
        for rel in paths:
            digest = file_digest(root / rel)
            if digest is not None:
                warm.files[rel] = (f"{self.job_dir}/{rel}", digest)

    # -- running ----------------------------------------------------------------------
    def _runtime_timer(self) -> threading.Timer | None:
        """--vastai-max-runtime in SSH mode: break the follow when the time is up. The
        timer thread only sets :attr:`time_up` and drops the link; the step's own thread
        sees it (:meth:`_after_ssh_trouble`) and fails the job."""
        cap = self.p.spec.max_runtime  # the rule's cap, else --vastai-max-runtime
        if not cap or self.m.running_since is None:
            return None
        left = max(cap - (time.monotonic() - self.m.running_since), 0.0)

        def time_up() -> None:
            self.time_up.set()
            self.close()

        timer = threading.Timer(left, time_up)
        timer.daemon = True
        timer.start()
        return timer

    def _run(self, started: bool) -> RunEnded:
        if not started:
            command = self.p.spec.command()
            env = self.p.spec.environment()
            tries = 0

            def launch(session: RemoteSession) -> None:
                nonlocal tries
                tries += 1
                # A retry after a lost answer: the first launch may have started the job
                # (the instance has one job directory, so a job found there is ours).
                if tries > 1 and session.job_status(self.job_dir) != "absent":
                    return
                session.launch(self.job_dir, command, env=env,
                               max_runtime=self.p.spec.max_runtime)

            self._log_offset = 0  # a new process: its log starts at its first byte
            self.with_ssh("launch", launch)
            crash_point("after_launch")
        end = self.with_ssh("run", self._follow)
        if end.lost and self.m.bid_price is not None:
            # The wrapper records even a SIGKILL's code; only a container stop loses it:
            # on a bid instance, a preemption the listing did not show in time (bids.py).
            raise Preempted(f"instance {self.m.instance_id}: the job's process disappeared "
                            "(the bid instance was stopped and started again)")
        if end.lost:
            raise JobFailure(f"instance {self.m.instance_id}: the job's process "
                                     "disappeared on the host (killed?) without an exit code")
        return RunEnded(exit_code=int(end.rc), over_runtime=self.time_up.is_set())

    def _follow(self, session: RemoteSession) -> Any:
        # The local log file is the authority on how far we got: after a drop
        # the follower resumes at exactly the bytes already written.
        return session.follow(self.job_dir, offset=self._log_offset,
                              on_output=self._log_bytes)

    def _log_bytes(self, chunk: bytes) -> None:
        """Into the local log, up to the download cap: a host that streams without end
        must not fill the user's disk (what came home stays; the job then fails)."""
        cap = self._download_cap()
        if cap is not None and self._log_total + len(chunk) > cap:
            self.p.spec.append_log(chunk[:max(cap - self._log_total, 0)])
            raise DownloadTooLarge(
                f"the job's log passed the download cap of {cap} bytes; the local copy "
                "stops there (--vastai-max-download, 0 for none)")
        self.p.spec.append_log(chunk)
        self._log_offset += len(chunk)
        self._log_total += len(chunk)

    # -- the link ---------------------------------------------------------------------
    def _connect(self, endpoint: Endpoint | None = None) -> RemoteSession:
        """Open a session to ``endpoint`` (one the step just found), else to the job's."""
        iid = self.steps.instance_id()
        endpoint = endpoint or self.m.endpoint
        assert endpoint is not None
        journal = self.p.journal
        pinned = journal.pinned_host_key(iid)
        try:
            session = RemoteSession.connect(endpoint,
                                            (self.m.key or self.p.instances.key).pkey,
                                            pinned_host_key=pinned,
                                            timeout=self.p.settings.ssh_timeout,
                                            meter=self.meter)
        except HostKeyMismatch as exc:
            raise JobFailure(f"instance {iid}: {exc}; refusing to talk to it") from None
        if pinned is None:
            journal.record_instance_contact(iid, ssh_host=endpoint.host,
                                            ssh_port=endpoint.port,
                                            host_key=session.host_key)
        if self.p.feeder is not None:  # from now on the run feeds its watchdog
            self.p.feeder.note(iid, endpoint, (self.m.key or self.p.instances.key).pkey,
                               session.host_key)
        with self._lock:
            old, self.session = self.session, session
        if old is not None:
            old.close()
        return session

    def _session(self, endpoint: Endpoint | None = None) -> RemoteSession:
        with self._lock:
            session = self.session
        return session if session is not None else self._connect(endpoint)

    def with_ssh(self, what: str, action: Callable[[RemoteSession], Any],
                 auth_grace: float | None = None, endpoint: Endpoint | None = None) -> Any:
        """Run ``action``; on SSH trouble reconnect with backoff within the budget.

        ``auth_grace``: how long a refused key may go on being refused (the whole budget
        when None) before the step gives up. ``endpoint``: where to connect when it is not
        the job's yet (a re-attach).
        """
        steps = self.steps
        deadline = time.monotonic() + SSH_RETRY_BUDGET
        backoff = Backoff(start=0.5, cap=10.0)
        while True:
            steps.check_cancel()
            try:
                return action(self._session(endpoint))
            except (SSHUnavailable, *LINK_ERRORS) as exc:
                if isinstance(exc, AuthRejected) and auth_grace is not None:
                    deadline = min(deadline, time.monotonic() + auth_grace)
                    auth_grace = None  # the grace counts from the first refusal
                deadline = self._after_ssh_trouble(what, exc, deadline)
                time.sleep(backoff.delay())
            except UnsafeArchive as exc:
                raise JobFailure(f"instance {self.m.instance_id}: {exc}") from None
            except RemoteError as exc:
                raise JobFailure(f"instance {self.m.instance_id}: {what} failed: {exc}"
                                    f"{disk_hint(str(exc))}") from None

    def _after_ssh_trouble(self, what: str, exc: BaseException, deadline: float) -> float:
        """Reconnect bookkeeping after one failed try: fail the step once the deadline has
        passed (or the job outran its runtime), else journal a retry; the deadline back,
        stretched while the instance is offline (the offline grace period decides)."""
        steps = self.steps
        self.close()
        steps.check_cancel()
        if self.time_up.is_set():
            raise JobFailure(steps.over_runtime_message()) from None
        self.p.instances.watcher.watch(steps.instance_id())  # fresh listings now
        self._check_instance_alive()
        if self._offline_since is not None:
            deadline = max(deadline, time.monotonic() + 1.0)
        reason = str(exc) or type(exc).__name__
        if time.monotonic() > deadline:
            raise JobFailure(f"instance {self.m.instance_id}: SSH kept failing "
                             f"during {what}: {reason}") from None
        steps.note_retry(f"{what}: {reason}")
        return deadline

    def _check_instance_alive(self) -> None:
        """After an SSH failure: is the instance gone or offline for too long?"""
        iid = self.steps.instance_id()
        seen = self.p.instances.watcher.sighting(iid)
        if seen is None:
            return
        if seen.row is None:
            if self.m.warm is not None and self.m.progress in (Progress.NOTHING,
                                                               Progress.UPLOADED):
                raise InstanceLost(f"instance {iid}, leased idle from the run's pool, is gone "
                                   f"(during {self.m.state.value}): renting another")
            self.steps.check_ended_itself(iid, self.m.state.value)
            raise JobFailure(f"instance {iid} vanished during {self.m.state.value}")
        self.steps.check_outbid(seen.row)  # a bid instance stopped by Vast.ai (bids.py)
        status = str(seen.row.get("actual_status") or "")
        self._offline_since = self.steps.heartbeat(iid, status, self._offline_since)


def link_command(work_dir: str, pairs: list[tuple[str, str, str]]) -> str:
    """Hard-link files already on the instance into ``work_dir`` (paths relative to
    $HOME), each only if it exists and (when a sha256 is given) its content matches;
    prints the relative path of each file linked."""
    lines = []
    for src, rel, digest in pairs:
        s, dst, r = shlex.quote(src), shlex.quote(f"{work_dir}/{rel}"), shlex.quote(rel)
        check = (f' && [ "$(sha256sum < {s} | cut -d" " -f1)" = {shlex.quote(digest)} ]'
                 if digest else "")
        lines.append(f'if [ -f {s} ]{check}; then mkdir -p -- "$(dirname -- {dst})" && '
                     f"ln -f -- {s} {dst} && echo {r}; fi")
    return "\n".join(["cd ~ || exit 1", *lines, "exit 0"])


def ssh_endpoint(row: dict) -> Endpoint | None:
    """Direct SSH (public IP + mapped port 22) if offered, else the SSH proxy."""
    ports = row.get("ports") or {}
    direct = ports.get("22/tcp") if isinstance(ports, dict) else None
    ip = row.get("public_ipaddr")
    if direct and ip:
        try:
            return Endpoint(host=str(ip).strip(), port=int(direct[0]["HostPort"]))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    if row.get("ssh_host") and row.get("ssh_port"):
        return Endpoint(host=str(row["ssh_host"]), port=int(row["ssh_port"]))
    return None
