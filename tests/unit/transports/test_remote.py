"""The paramiko adapter (transports/ssh: session.py, the modules it joins, scripts.py; keys.py).

Pure parts (path rules, env quoting, tar building, safe extraction) are tested on
local bytes; everything that talks SSH runs against the simulator's real SSH server
(``InstanceSSH``), whose exec runs ``/bin/sh -c`` in a sandbox directory on this
machine, so the tests can look at the "remote" files directly too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from snakemake_executor_plugin_vastai.run.keys import (
    KeyFileError,
    RunKey,
    generate_keypair,
    load_private_key,
    write_private_key,
)
from snakemake_executor_plugin_vastai.simulator.sshd import InstanceSSH
from snakemake_executor_plugin_vastai.transports.ssh import scripts as remote_scripts
from snakemake_executor_plugin_vastai.transports.ssh.channels import Endpoint
from snakemake_executor_plugin_vastai.transports.ssh.errors import (
    AuthRejected,
    HostKeyMismatch,
    MissingRemotePaths,
    RemoteError,
    SSHUnavailable,
    UnsafeArchive,
)
from snakemake_executor_plugin_vastai.transports.ssh.extract import _ChannelReader, _Extractor
from snakemake_executor_plugin_vastai.transports.ssh.paths import AllowedPaths, clean_relative
from snakemake_executor_plugin_vastai.transports.ssh.session import RemoteSession
from snakemake_executor_plugin_vastai.transports.ssh.upload import _TarSender

JOB = "vastai-job"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> RunKey:
    return RunKey.load_or_create(tmp_path_factory.mktemp("keys"), "run-test")


class Host:
    """A simulated instance's SSH server plus helpers to reach it."""

    def __init__(self, root: Path, key: RunKey) -> None:
        self.sandbox = root / "sandbox"
        self.sandbox.mkdir()
        self.key = key
        # A directory of the sandbox first on PATH: a test may plant its own `tar` there,
        # as a hostile host could.
        path = f"{self.sandbox / 'bin'}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        self.ssh = InstanceSSH(
            sandbox=self.sandbox,
            tag=f"test-remote-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            authorized_keys=lambda: [key.public_line],
            env={"PATH": path},
        )
        self.port = self.ssh.start()
        self.endpoint = Endpoint("127.0.0.1", self.port)
        self.sessions: list[RemoteSession] = []

    def connect(
        self, *, pinned: str | None = None, pkey: paramiko.PKey | None = None, **kwargs: float
    ) -> RemoteSession:
        session = RemoteSession.connect(
            self.endpoint, pkey or self.key.pkey, pinned_host_key=pinned, **kwargs
        )
        self.sessions.append(session)
        return session

    def stop(self) -> None:
        for session in self.sessions:
            session.close()
        self.ssh.stop()


@pytest.fixture
def host(tmp_path: Path, key: RunKey) -> Iterator[Host]:
    h = Host(tmp_path, key)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def session(host: Host) -> RemoteSession:
    return host.connect()


def local_tree(root: Path) -> set[str]:
    """Every path below ``root`` (relative), links not followed."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- keys


def test_generated_key_pair_is_ed25519_and_loads_in_paramiko(tmp_path: Path) -> None:
    pem, public = generate_keypair("c")
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 AAAA") and public.endswith(" c")
    path = tmp_path / "k" / "id"
    assert write_private_key(path, pem)
    pkey = load_private_key(path)
    assert f"{pkey.get_name()} {pkey.get_base64()}" == public.rsplit(" ", 1)[0]


def test_private_key_file_is_0600_in_0700_dir_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "keys" / "id"
        write_private_key(path, generate_keypair()[0])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["id"]  # no temp file left


def test_existing_key_wins_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "id"
    first, second = generate_keypair()[0], generate_keypair()[0]
    assert write_private_key(path, first, replace=False)
    assert not write_private_key(path, second, replace=False)
    assert path.read_bytes() == first


def test_load_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "id"
    write_private_key(path, generate_keypair()[0])
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(path)


def test_run_key_is_stable_and_never_shows_key_material(tmp_path: Path) -> None:
    key = RunKey.load_or_create(tmp_path / "keys", "run-7")
    again = RunKey.load_or_create(tmp_path / "keys", "run-7")
    assert again.public_line == key.public_line
    assert key.public_line.endswith(" vastai-run-7")
    secret_body = "".join(key.path.read_text().splitlines()[1:-1])
    for text in (repr(key), str(key)):
        assert "PRIVATE" not in text and secret_body[:40] not in text
        assert key.public_line.split()[1] not in text  # a fingerprint is shown instead
        assert "SHA256:" in text
    with pytest.raises(KeyFileError):
        RunKey.load_or_create(tmp_path / "keys", "../escape")


# --------------------------------------------------------------------------- pure parts


def test_allowed_paths_rules() -> None:
    allowed = AllowedPaths(["results/a.txt", "./logs/x.log"], ["results/tree"])
    assert allowed.check("results/a.txt") == "results/a.txt"
    assert allowed.check("./logs//x.log") == "logs/x.log"
    assert allowed.check("results/tree", is_dir=True) == "results/tree"
    assert allowed.check("results/tree/deep/f") == "results/tree/deep/f"
    assert allowed.check("results", is_dir=True) == "results"  # parent of declared paths
    rejected = [
        ("../x", False),
        ("/etc/passwd", False),
        ("results/tree/../../x", False),
        ("results/b.txt", False),  # undeclared sibling
        ("results", False),  # a file where declared paths need a directory
        ("results/tree", False),  # a file where a directory was declared
        ("results/a.txt", True),  # a directory where a file was declared
        ("results/a.txt/inner", False),
        ("", False),
        (".", True),
    ]
    for name, is_dir in rejected:
        with pytest.raises(UnsafeArchive):
            allowed.check(name, is_dir=is_dir)


def test_clean_relative_refuses_escapes() -> None:
    assert clean_relative("a/./b//c/") == "a/b/c"
    for bad in ("/a", "a/../b", "..", "", "a\0b"):
        with pytest.raises(ValueError):
            clean_relative(bad)


def test_env_file_survives_hostile_values_through_sh(tmp_path: Path) -> None:
    values = {
        "PLAIN": "x",
        "QUOTES": 'it\'s "quoted" $HOME `id` $(id) \\ ;|&',
        "NEWLINE": "a\nb",
        "EMPTY": "",
    }
    env_path = tmp_path / "env"
    env_path.write_bytes(remote_scripts.env_file(values))
    script = ". ./env; " + "; ".join(f'printf "%s\\0" "${k}"' for k in values)
    out = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, check=True)
    assert out.stdout.split(b"\0")[:-1] == [v.encode() for v in values.values()]
    with pytest.raises(ValueError) as err:
        remote_scripts.env_file({"BAD NAME": "s3cr3t"})
    assert "s3cr3t" not in str(err.value)


class FakeChannel:
    """Just enough of a paramiko Channel for the tar sender and reader."""

    def __init__(self, data: bytes = b"", chunk: int = 7000) -> None:
        self.sent = bytearray()
        self._data = memoryview(data)
        self._chunk = chunk
        self.eof_received = True
        self.exit_status = 0

    def send(self, data: bytes) -> int:
        n = min(len(data), 32768)
        self.sent += data[:n]
        return n

    def recv(self, n: int) -> bytes:
        n = min(n, self._chunk)
        out, self._data = bytes(self._data[:n]), self._data[n:]
        return out


def extract_local(
    data: bytes,
    root: Path,
    allowed: AllowedPaths,
    max_bytes: int | None = None,
    *,
    stream_limit: int | None = None,
) -> list[Path]:
    """Run the safe extractor over tar bytes, as if they came from a channel."""
    reader = _ChannelReader(FakeChannel(data), "test", stream_limit)  # type: ignore[arg-type]
    return _Extractor(root, allowed, max_bytes).extract(reader)


def test_tar_sender_writes_a_valid_padded_archive(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.txt").write_text("hello")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "link").symlink_to("sub/f.txt")  # uploaded as the file it points to
    chan = FakeChannel()
    sender = _TarSender(chan)  # type: ignore[arg-type]
    from snakemake_executor_plugin_vastai.transports.ssh.upload import _plan_upload, _walk

    for item in _plan_upload([(tree, "in")], {".vastai/env": (b"export A=1\n", 0o600)}):
        members = _walk(*item, frozenset()) if isinstance(item, tuple) else [item]
        for member in members:
            sender.add(member)
    sender.finish()
    assert len(chan.sent) % (20 * 512) == 0
    with tarfile.open(fileobj=io.BytesIO(bytes(chan.sent))) as tar:
        got = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(got["in/link"]).read() == b"hello"  # type: ignore[union-attr]
    assert sorted(got) == [
        ".vastai",
        ".vastai/env",
        "in",
        "in/link",
        "in/run.sh",
        "in/sub",
        "in/sub/f.txt",
    ]
    assert got[".vastai"].mode == 0o700 and got[".vastai"].isdir()
    assert got[".vastai/env"].mode == 0o600
    assert got["in/run.sh"].mode & 0o111


def local_tar(members: list[dict]) -> bytes:
    """A tar built from a member spec (same spec as the remote builder below)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in members:
            info, data = _member_from_spec(spec)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member_from_spec(spec: dict) -> tuple[tarfile.TarInfo, bytes | None]:
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
    }
    info = tarfile.TarInfo(spec["name"])
    info.type = types[spec.get("type", "file")]
    info.linkname = spec.get("link", "")
    info.mode = spec.get("mode", 0o644)
    info.mtime = spec.get("mtime", 1_600_000_000)
    data = None
    if info.type == tarfile.REGTYPE:
        data = spec.get("data", "x").encode() * spec.get("repeat", 1)
        info.size = len(data)
    return info, data


def test_extractor_keeps_modes_and_mtimes_and_drops_setuid(tmp_path: Path) -> None:
    data = local_tar(
        [
            {"name": "out", "type": "dir", "mode": 0o750},
            {"name": "out/tool", "data": "#!/bin/sh\n", "mode": 0o4777},
            {"name": "out/sub/deep.txt", "data": "deep"},
            {"name": "out/ln", "type": "sym", "link": "sub/deep.txt"},
            {"name": "out/hard", "type": "hard", "link": "out/tool"},
            {"name": "log.txt", "data": "log", "mtime": 1_234_567_890},
        ]
    )
    root = tmp_path / "home"
    allowed = AllowedPaths(["log.txt"], ["out"])
    written = extract_local(data, root, allowed)
    assert {p.relative_to(root).as_posix() for p in written} == {
        "out/tool",
        "out/sub/deep.txt",
        "out/ln",
        "out/hard",
        "log.txt",
    }
    assert stat.S_IMODE((root / "out/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "out").stat().st_mode) == 0o750
    assert (root / "log.txt").stat().st_mtime == 1_234_567_890
    assert os.readlink(root / "out/ln") == "sub/deep.txt"
    assert (root / "out/ln").read_text() == "deep"
    assert (root / "out/hard").read_text() == "#!/bin/sh\n"
    assert not (root / "out/hard").samefile(root / "out/tool")  # a copy, not a link
    assert not [p for p in local_tree(root) if ".vastai-tmp" in p]


# Hostile archives: (member spec, allowed files, allowed dirs). Each must be refused
# with nothing written outside the declared paths.
HOSTILE = {
    "dotdot": [{"name": "../escaped.txt"}],
    "absolute": [{"name": "{outside}/abs.txt"}],
    "undeclared": [{"name": "other.txt"}],
    "symlink_to_etc_passwd": [{"name": "outdir/pw", "type": "sym", "link": "/etc/passwd"}],
    "symlink_climbing": [{"name": "outdir/up", "type": "sym", "link": "../../outside"}],
    "symlink_as_declared_file_leaving": [{"name": "out.txt", "type": "sym", "link": "../x"}],
    "symlink_climbing_out_of_its_dir": [{"name": "outdir/a/up", "type": "sym",
                                          "link": "../../logs/../../x"}],
    "write_through_own_symlink": [
        {"name": "outdir/sub", "type": "dir"},
        {"name": "outdir/l", "type": "sym", "link": "sub"},
        {"name": "outdir/l/x.txt"},
    ],
    "hardlink_outside": [{"name": "outdir/h", "type": "hard", "link": "/etc/passwd"}],
    "hardlink_to_undelivered": [{"name": "outdir/h", "type": "hard", "link": "out.txt"}],
    "file_where_dir_declared": [{"name": "outdir"}],
    "dir_where_file_declared": [{"name": "out.txt", "type": "dir"}],
    "fifo": [{"name": "outdir/pipe", "type": "fifo"}],
    "device": [{"name": "outdir/dev", "type": "chr"}],
    "huge": [{"name": "out.txt", "data": "z", "repeat": 3 * 1024 * 1024}],
    "huge_by_hard_links": [
        {"name": "outdir/big", "data": "z", "repeat": 700 * 1024},
        {"name": "outdir/h1", "type": "hard", "link": "outdir/big"},
        {"name": "outdir/h2", "type": "hard", "link": "outdir/big"},
    ],
}
MAX_BYTES = 1024 * 1024


def _hostile_spec(case: str, outside: Path) -> list[dict]:
    spec = json.loads(json.dumps(HOSTILE[case]))
    for m in spec:
        m["name"] = m["name"].replace("{outside}", str(outside))
    # A legitimate member first: it may be written, it is declared.
    return [{"name": "logs/ok.log", "data": "fine"}, *spec]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_extractor_refuses_hostile_archive_locally(tmp_path: Path, case: str) -> None:
    outside, root = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    data = local_tar(_hostile_spec(case, outside))
    allowed = AllowedPaths(["out.txt", "logs/ok.log"], ["outdir"])
    with pytest.raises(UnsafeArchive):
        extract_local(data, root, allowed, MAX_BYTES)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert local_tree(root) <= {"logs", "logs/ok.log", "outdir", "outdir/sub", "outdir/l",
                                "outdir/big", "outdir/h1", "outdir/a"}


def test_a_local_symlink_that_was_there_before_is_the_users_and_followed(tmp_path: Path):
    """``results -> /big/disk``: an everyday layout, made by the user, not by the host."""
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    root.mkdir()
    (root / "outdir").symlink_to(elsewhere)
    data = local_tar([{"name": "outdir", "type": "dir"}, {"name": "outdir/f.txt"}])
    extract_local(data, root, AllowedPaths([], ["outdir"]))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["f.txt"]
    assert (root / "outdir").is_symlink()


@pytest.mark.parametrize("members, link, reads", [
    # a declared output that links to the file beside it ("link the best model")
    ([{"name": "model.txt", "data": "w"}, {"name": "best.txt", "type": "sym",
                                           "link": "model.txt"}], "best.txt", "w"),
    # a link inside a directory output that climbs but stays inside it
    ([{"name": "outdir/top.txt", "data": "t"}, {"name": "outdir/sub", "type": "dir"},
      {"name": "outdir/sub/up.txt", "type": "sym", "link": "../top.txt"}],
     "outdir/sub/up.txt", "t"),
])
def test_links_that_stay_inside_the_outputs_are_kept_as_links(tmp_path, members, link, reads):
    root = tmp_path / "home"
    extract_local(local_tar(members), root,
                  AllowedPaths(["model.txt", "best.txt"], ["outdir"]), MAX_BYTES)
    assert (root / link).is_symlink()
    assert (root / link).read_text() == reads


def test_junk_after_the_archive_is_refused(tmp_path: Path) -> None:
    data = local_tar([{"name": "out.txt"}]) + b"\0" * (2 * 1024 * 1024)
    with pytest.raises(UnsafeArchive, match="after the archive"):
        reader = _ChannelReader(FakeChannel(data), "test", None)  # type: ignore[arg-type]
        _Extractor(tmp_path, AllowedPaths(["out.txt"], []), None).extract(reader)
        reader.drain()


class DyingChannel(FakeChannel):
    """Serves part of an archive, then raises as paramiko does when the link dies
    with data still buffered (EOFError, OSError or SSHException, not b"")."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        super().__init__(data)
        self._error = error

    def recv(self, n: int) -> bytes:
        if not self._data:
            raise self._error
        return super().recv(n)


@pytest.mark.parametrize(
    "error", [EOFError(), OSError("socket closed"), paramiko.SSHException("link gone")]
)
def test_link_dying_mid_download_is_ssh_unavailable(tmp_path: Path, error: Exception) -> None:
    data = local_tar([{"name": "out.txt", "repeat": 100_000}])[:30_000]
    reader = _ChannelReader(DyingChannel(data, error), "test", None)  # type: ignore[arg-type]
    with pytest.raises(SSHUnavailable, match="connection lost during download"):
        _Extractor(tmp_path, AllowedPaths(["out.txt"], []), None).extract(reader)


def test_stream_cap_stops_an_endless_archive(tmp_path: Path) -> None:
    data = local_tar([{"name": f"outdir/f{i}", "data": "y" * 1000} for i in range(200)])
    with pytest.raises(UnsafeArchive, match="huge"):
        extract_local(data, tmp_path, AllowedPaths([], ["outdir"]), stream_limit=50_000)


# --------------------------------------------------------------------------- connect


def test_connect_pins_host_key_and_refuses_a_changed_one(host: Host) -> None:
    first = host.connect()
    assert first.host_key.split()[:2] == host.ssh.host_key_public.split()[:2]
    pinned = first.host_key
    host.connect(pinned=pinned + " some-comment").close()  # same key: fine
    host.ssh.rotate_host_key()
    with pytest.raises(HostKeyMismatch, match=str(host.port)):
        host.connect(pinned=pinned)
    fresh = host.connect()  # no pin: trust on first use, expose the new key
    assert fresh.host_key != pinned


def test_refused_connection_is_transient(host: Host) -> None:
    host.ssh.faults.refuse_until = time.monotonic() + 30
    started = time.monotonic()
    with pytest.raises(SSHUnavailable, match=f"127.0.0.1:{host.port}"):
        host.connect(timeout=5)
    assert time.monotonic() - started < 4
    host.ssh.faults.refuse_until = 0
    assert host.connect().run("true").rc == 0


def test_nothing_listening_is_transient(tmp_path: Path, key: RunKey) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SSHUnavailable, match="cannot connect"):
        RemoteSession.connect(Endpoint("127.0.0.1", port), key.pkey, pinned_host_key=None)


def test_wrong_key_is_rejected_as_retryable_auth_failure(host: Host) -> None:
    other = paramiko.Ed25519Key.from_private_key(io.StringIO(generate_keypair()[0].decode()))
    with pytest.raises(AuthRejected) as err:
        host.connect(pkey=other)
    assert isinstance(err.value, SSHUnavailable)


def test_socket_has_tcp_nodelay(session: RemoteSession) -> None:
    import socket

    sock = session._transport.sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


# --------------------------------------------------------------------------- run


def test_run_collects_output_status_and_stdin(session: RemoteSession) -> None:
    done = session.run("echo out; echo err >&2; exit 3")
    assert (done.rc, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    blob = os.urandom(3 * 1024 * 1024)  # larger than the channel window both ways
    assert session.run("cat", stdin=blob).stdout == blob
    assert session.run("pwd").stdout.decode().strip() == str(Path(session_home(session)))


def session_home(session: RemoteSession) -> str:
    return session.run("echo $HOME").stdout.decode().strip()


def test_run_timeout_is_transient(session: RemoteSession) -> None:
    with pytest.raises(SSHUnavailable, match="timed out"):
        session.run("sleep 5", timeout=0.5)


# --------------------------------------------------------------------------- upload


def test_upload_nested_tree_and_private_extra_member(
    host: Host, session: RemoteSession, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "data" / "a" / "b").mkdir(parents=True)
    (src / "data" / "a" / "b" / "deep.txt").write_text("deep")
    (src / "data" / "top.txt").write_text("top")
    (src / "single.bin").write_bytes(b"\x00\x01" * 1000)
    sent = session.upload(
        [(src / "data", "in/data"), (src / "single.bin", "in/single.bin")],
        JOB,
        extra={".vastai/env": (b"export TOKEN='s3cr3t'\n", 0o600)},
    )
    assert sent > 2000 and sent % 10240 == 0
    remote = host.sandbox / JOB
    assert (remote / "in/data/a/b/deep.txt").read_text() == "deep"
    assert (remote / "in/data/top.txt").read_text() == "top"
    assert (remote / "in/single.bin").read_bytes() == b"\x00\x01" * 1000
    modes = session.run(f"cd {JOB} && stat -c '%a %n' .vastai .vastai/env").stdout.decode()
    assert modes.split("\n")[:2] == ["700 .vastai", "600 .vastai/env"]


def test_upload_to_absolute_dir_and_failure_reports_tar_error(
    host: Host, session: RemoteSession, tmp_path: Path
) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    target = host.sandbox / "abs" / "dir"
    session.upload([(f, "f.txt")], str(target))
    assert (target / "f.txt").read_text() == "x"
    (host.sandbox / "blocker").write_text("a file, not a directory")
    with pytest.raises(RemoteError, match=r"blocker.*exit") as err:
        session.upload([(f, "f.txt")], "blocker/sub")
    assert not isinstance(err.value, SSHUnavailable)


def test_upload_refuses_escaping_names_before_sending(
    session: RemoteSession, tmp_path: Path
) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    for bad in ("../f.txt", "/etc/f.txt"):
        with pytest.raises(ValueError):
            session.upload([(f, bad)], JOB)


# --------------------------------------------------------------------------- download


def make_outputs(host: Host) -> Path:
    job = host.sandbox / JOB
    (job / "results" / "tree" / "sub").mkdir(parents=True)
    (job / "results" / "a.txt").write_text("A")
    (job / "results" / "undeclared.txt").write_text("not for you")
    (job / "results" / "tree" / "sub" / "t.txt").write_text("T")
    (job / "logs").mkdir()
    (job / "logs" / "x.log").write_text("log")
    (job / "secret.env").write_text("nope")
    return job


def test_download_brings_declared_outputs_only(
    host: Host, session: RemoteSession, tmp_path: Path
) -> None:
    make_outputs(host)
    home = tmp_path / "home"
    allowed = AllowedPaths(["results/a.txt", "logs/x.log"], ["results/tree"])
    written = session.download(
        JOB, ["results/tree", "results/a.txt", "logs/x.log"], home, allowed=allowed
    )
    assert sorted(p.relative_to(home).as_posix() for p in written) == [
        "logs/x.log",
        "results/a.txt",
        "results/tree/sub/t.txt",
    ]
    assert local_tree(home) == {
        "logs",
        "logs/x.log",
        "results",
        "results/a.txt",
        "results/tree",
        "results/tree/sub",
        "results/tree/sub/t.txt",
    }
    assert (home / "results/tree/sub/t.txt").read_text() == "T"


def test_download_reports_missing_paths_after_fetching_the_rest(
    host: Host, session: RemoteSession, tmp_path: Path
) -> None:
    make_outputs(host)
    home = tmp_path / "home"
    allowed = AllowedPaths(["results/a.txt", "results/missing.txt"], ["nodir"])
    with pytest.raises(MissingRemotePaths) as err:
        session.download(
            JOB, ["results/a.txt", "results/missing.txt", "nodir"], home, allowed=allowed
        )
    assert err.value.missing == ["results/missing.txt", "nodir"]
    assert "results/missing.txt, nodir" in str(err.value)
    assert (home / "results/a.txt").read_text() == "A"
    with pytest.raises(MissingRemotePaths):  # nothing at all present: an empty stream
        session.download(JOB, ["nodir"], home, allowed=allowed)
    with pytest.raises(RemoteError, match="does not exist"):
        session.download("no-such-dir", ["x"], home, allowed=AllowedPaths(["x"], []))


def test_download_with_real_tar_links(host: Host, session: RemoteSession, tmp_path: Path) -> None:
    session.run(
        f"mkdir -p {JOB}/out/sub && cd {JOB}/out && echo hi > sub/f && "
        "ln -s sub/f soft && ln sub/f hard"
    )
    home = tmp_path / "home"
    session.download(JOB, ["out"], home, allowed=AllowedPaths([], ["out"]))
    assert os.readlink(home / "out/soft") == "sub/f"
    assert (home / "out/hard").read_text() == "hi\n"


BUILD_TAR = """
import io, json, sys, tarfile
types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
         "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}
with tarfile.open(sys.argv[2], "w", format=tarfile.PAX_FORMAT) as tar:
    for spec in json.loads(sys.argv[1]):
        info = tarfile.TarInfo(spec["name"])
        info.type = types[spec.get("type", "file")]
        info.linkname = spec.get("link", "")
        info.mode = spec.get("mode", 0o644)
        data = None
        if info.type == tarfile.REGTYPE:
            data = spec.get("data", "x").encode() * spec.get("repeat", 1)
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
"""

# The hostile host's own `tar`: answers every `tar -c` with the prepared archive.
EVIL_TAR = """#!/bin/sh
if [ "$1" = "-c" ]; then exec cat "$HOME/evil.tar"; fi
exec /usr/bin/tar "$@"
"""


def plant_hostile_tar(host: Host, session: RemoteSession, spec: list[dict]) -> None:
    """Build the archive on the instance (python via exec) and plant a lying `tar`."""
    done = session.run(
        f"python - {shlex.quote(json.dumps(spec))} evil.tar", stdin=BUILD_TAR.encode()
    )
    assert done.rc == 0, done.stderr
    session.upload([], "bin", extra={"tar": (EVIL_TAR.encode(), 0o755)})
    assert session.run("command -v tar").stdout.decode().strip().endswith("/bin/tar")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_download_refuses_hostile_archive(
    host: Host, session: RemoteSession, tmp_path: Path, case: str
) -> None:
    outside, home = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    # The requested paths exist, so the (lying) tar is asked for them.
    session.run(f"mkdir -p {JOB}/outdir {JOB}/logs && touch {JOB}/out.txt {JOB}/logs/ok.log")
    plant_hostile_tar(host, session, _hostile_spec(case, outside))
    allowed = AllowedPaths(["out.txt", "logs/ok.log"], ["outdir"])
    with pytest.raises(UnsafeArchive, match=f"127.0.0.1:{host.port}"):
        session.download(
            JOB, ["out.txt", "outdir", "logs/ok.log"], home, allowed=allowed, max_bytes=MAX_BYTES
        )
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert local_tree(home) <= {"logs", "logs/ok.log", "outdir", "outdir/sub", "outdir/l",
                                "outdir/big", "outdir/h1", "outdir/a"}
    assert session.run("true").rc == 0  # the session survives a refused download


# --------------------------------------------------------------------------- big & many


def test_64_mib_up_and_down_md5_equal(host: Host, session: RemoteSession, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1024 * 1024))
    started = time.perf_counter()
    session.upload([(src, "big.bin")], JOB)
    up = time.perf_counter() - started
    assert md5(host.sandbox / JOB / "big.bin") == md5(src)
    home = tmp_path / "home"
    started = time.perf_counter()
    session.download(JOB, ["big.bin"], home, allowed=AllowedPaths(["big.bin"], []))
    down = time.perf_counter() - started
    assert md5(home / "big.bin") == md5(src)
    print(
        f"\n64 MiB: up {size / up / 1e6:.0f} MB/s, down {size / down / 1e6:.0f} MB/s "
        f"({session._transport.remote_cipher})"
    )


def test_many_small_files_each_way_in_one_channel(
    host: Host, session: RemoteSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "small"
    src.mkdir()
    for i in range(2000):
        (src / f"f{i:04d}.bin").write_bytes(os.urandom(4096))
    opened: list[str] = []
    real_exec = session._exec
    monkeypatch.setattr(
        session, "_exec", lambda command, what: opened.append(what) or real_exec(command, what)
    )
    started = time.perf_counter()
    session.upload([(src, "small")], JOB)
    up = time.perf_counter() - started
    home = tmp_path / "home"
    started = time.perf_counter()
    written = session.download(JOB, ["small"], home, allowed=AllowedPaths([], ["small"]))
    down = time.perf_counter() - started
    assert opened == ["upload", "download"]
    assert len(written) == 2000
    for name in ("f0000.bin", "f1234.bin", "f1999.bin"):
        assert (home / "small" / name).read_bytes() == (src / name).read_bytes()
    print(
        f"\n2000 x 4 KiB: up {up:.2f} s ({2000 / up:.0f} files/s), "
        f"down {down:.2f} s ({2000 / down:.0f} files/s)"
    )


def test_dropped_upload_is_transient_and_a_retry_succeeds(host: Host, tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    host.ssh.faults.drop_after_bytes = 3 * 1024 * 1024
    doomed = host.connect()
    with pytest.raises(SSHUnavailable, match="upload"):
        doomed.upload([(src, "data.bin")], JOB)
    host.connect().upload([(src, "data.bin")], JOB)
    assert md5(host.sandbox / JOB / "data.bin") == md5(src)


def test_dropped_download_leaves_no_half_file(host: Host, tmp_path: Path) -> None:
    (host.sandbox / JOB).mkdir()
    (host.sandbox / JOB / "data.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    home = tmp_path / "home"
    allowed = AllowedPaths(["data.bin"], [])
    host.ssh.faults.drop_after_bytes = 3 * 1024 * 1024
    doomed = host.connect()
    with pytest.raises(SSHUnavailable, match="download"):
        doomed.download(JOB, ["data.bin"], home, allowed=allowed)
    assert local_tree(home) == set()  # neither data.bin nor a temporary file
    host.connect().download(JOB, ["data.bin"], home, allowed=allowed)
    assert md5(home / "data.bin") == md5(host.sandbox / JOB / "data.bin")


# --------------------------------------------------------------------------- detached runs


def test_launch_follow_streams_log_and_sees_completion_promptly(
    host: Host, session: RemoteSession
) -> None:
    assert session.job_status(JOB) == "absent"
    command = (
        "echo first; echo to-stderr >&2; sleep 1; echo second; "
        'python -c \'import time; open("ended_at", "w").write(repr(time.time()))\'; exit 5'
    )
    pid = session.launch(JOB, command)
    assert pid > 0
    assert session.job_status(JOB) == "running"
    arrivals: list[tuple[float, bytes]] = []
    end = session.follow(JOB, on_output=lambda b: arrivals.append((time.time(), b)))
    seen = time.time()
    log = b"".join(chunk for _, chunk in arrivals)
    assert log == b"first\nto-stderr\nsecond\n"
    assert (end.rc, end.lost, end.offset) == (5, False, len(log))
    ended_at = float((host.sandbox / JOB / "ended_at").read_text())
    first_at = next(t for t, chunk in arrivals if b"first" in chunk)
    print(
        f"\ncompletion seen {seen - ended_at:.3f} s after the job ended; "
        f"first line {ended_at - first_at:.2f} s before the end"
    )
    assert seen - ended_at < 0.5
    assert ended_at - first_at > 0.5  # streamed while running, not at the end
    assert session.job_status(JOB) == ("finished", 5)
    # Following again from the end returns at once with no bytes.
    again: list[bytes] = []
    assert session.follow(JOB, offset=end.offset, on_output=again.append).rc == 5
    assert again == []


def test_job_survives_the_connection_that_launched_it(host: Host) -> None:
    launcher = host.connect()
    launcher.launch(JOB, "sleep 1; echo survived; exit 7")
    launcher.close()  # like a dropped connection or a crashed client
    later = host.connect()
    assert later.job_status(JOB) == "running"
    out: list[bytes] = []
    end = later.follow(JOB, on_output=out.append)
    assert (end.rc, b"".join(out)) == (7, b"survived\n")


def test_exit_code_comes_from_rc_file_not_from_the_log(session: RemoteSession) -> None:
    fake = "end rc 0\\nVASTAI-END rc=0\\nexit code: 0\\n"
    session.launch(JOB, f"printf '{fake}'; printf '{fake}' >&2; exit 3")
    assert session.follow(JOB, on_output=lambda b: None).rc == 3


def test_env_travels_in_a_private_file_never_on_a_command_line(
    host: Host, session: RemoteSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    commands: list[str] = []
    real_exec = session._exec
    monkeypatch.setattr(
        session, "_exec", lambda command, what: commands.append(command) or real_exec(command, what)
    )
    session.launch(JOB, 'printf "%s" "$API_TOKEN" > seen', env={"API_TOKEN": secret})
    session.follow(JOB, on_output=lambda b: None)
    assert (host.sandbox / JOB / "seen").read_text() == secret
    assert commands and not any(secret in c for c in commands)
    assert stat.S_IMODE((host.sandbox / JOB / ".vastai/env").stat().st_mode) == 0o600


def test_sigkilled_job_is_recorded_as_137(host: Host, session: RemoteSession) -> None:
    session.launch(JOB, "echo $$ > job.pid; echo started; exec sleep 60")
    pid_file = host.sandbox / JOB / "job.pid"
    wait_until(pid_file.exists)
    wait_until(lambda: pid_file.read_text().strip() != "")
    assert session.run(f"kill -9 {pid_file.read_text().strip()}").rc == 0
    end = session.follow(JOB, on_output=lambda b: None)
    assert (end.rc, end.lost) == (137, False)


def test_job_killed_with_its_wrapper_is_lost(host: Host, session: RemoteSession) -> None:
    session.launch(JOB, "echo started; sleep 60")
    assert session.job_status(JOB) == "running"
    host.ssh.kill_processes(signal.SIGKILL)
    assert session.job_status(JOB) == "lost"
    out: list[bytes] = []
    end = session.follow(JOB, on_output=out.append)
    assert (end.rc, end.lost) == (None, True)
    assert b"".join(out) == b"started\n"


def test_second_launch_is_refused_while_running_and_replaces_a_finished_job(
    host: Host, session: RemoteSession
) -> None:
    session.launch(JOB, "echo one; sleep 60")
    with pytest.raises(RemoteError, match="already running"):
        session.launch(JOB, "echo again")
    host.ssh.kill_processes(signal.SIGKILL)  # lost: may be launched again
    session.launch(JOB, "echo two; exit 2")
    out: list[bytes] = []
    assert session.follow(JOB, on_output=out.append).rc == 2
    session.launch(JOB, "echo three")
    out.clear()
    assert session.follow(JOB, on_output=out.append).rc == 0
    assert b"".join(out) == b"three\n"  # a fresh log, not the old one


def test_follow_resumes_after_a_drop_without_loss_or_duplication(
    host: Host, session: RemoteSession
) -> None:
    lines = 3000
    job = (
        "python -c 'import sys, time\n"
        f"for i in range({lines}):\n"
        '    sys.stdout.write("line %05d " % i + "x" * 88 + "\\n"); sys.stdout.flush()\n'
        "    time.sleep(0.0005)\n"
        "'"
    )
    expected = b"".join(b"line %05d " % i + b"x" * 88 + b"\n" for i in range(lines))
    session.launch(JOB, job)
    host.ssh.faults.drop_after_bytes = 60_000  # armed on the next connection
    doomed = host.connect()
    got = bytearray()
    with pytest.raises(SSHUnavailable) as err:
        doomed.follow(JOB, on_output=got.extend)
    assert err.value.offset == len(got)
    assert 0 < len(got) <= 60_000
    resumed = host.connect()
    end = resumed.follow(JOB, offset=err.value.offset, on_output=got.extend)
    assert end.rc == 0 and end.offset == len(expected)
    assert bytes(got) == expected
    assert (host.sandbox / JOB / ".vastai/log").read_bytes() == expected


def test_silent_host_is_detected_by_missing_heartbeats(host: Host, session: RemoteSession) -> None:
    session.launch(JOB, "echo before; sleep 2; echo after")
    got = bytearray()
    follower = host.connect()
    stopped = threading.Timer(0.5, host.ssh.kill_processes, args=(signal.SIGSTOP,))
    stopped.start()  # freezes job and follower alike: the host goes silent
    try:
        with pytest.raises(SSHUnavailable, match="no sign of life") as err:
            follower.follow(JOB, on_output=got.extend, heartbeat=0.2)
    finally:
        stopped.join()
        host.ssh.kill_processes(signal.SIGCONT)
    assert err.value.offset == len(got) == len(b"before\n")
    end = session.follow(JOB, offset=err.value.offset, on_output=got.extend)
    assert end.rc == 0 and bytes(got) == b"before\nafter\n"


def test_sessions_do_not_leak_file_descriptors(session: RemoteSession) -> None:
    session.run("true")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        session.run("echo hi")
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_follow_of_a_never_launched_job_is_an_error(session: RemoteSession) -> None:
    with pytest.raises(RemoteError, match="no job was launched"):
        session.follow("nothing-here", on_output=lambda b: None)


def test_sweep_ends_everything_the_job_started_detached_ones_included(
    host: Host, session: RemoteSession
) -> None:
    """A job that leaves a background loader, a nohup'd and a setsid'd process behind: the
    next job leased on the instance must find none of them (warm instances)."""
    marker = f"sleep 999.{os.getpid()}"  # a duration nothing else on the host sleeps
    command = (f"{marker}1 & nohup {marker}2 >/dev/null 2>&1 & "
               f"setsid {marker}3 >/dev/null 2>&1 & echo started; exit 0")
    session.launch(JOB, command)
    assert session.follow(JOB, on_output=lambda b: None).rc == 0

    def alive() -> list[str]:
        out = session.run(f"ps -eo args | grep '^{marker}' || true").stdout
        return out.decode().split("\n")[:-1]

    assert len(alive()) == 3, "the job's leftovers were not started"
    swept = session.sweep(JOB)
    assert swept.clean and swept.left == 0
    assert alive() == []


def test_sweep_of_a_job_without_a_tag_is_not_clean(host: Host, session: RemoteSession) -> None:
    """A job launched by an older plugin carries no tag: nothing can be proven gone."""
    session.run(f"mkdir -p {JOB}/.vastai")
    swept = session.sweep(JOB)
    assert swept.untagged and not swept.clean
