"""Tests of a simulated instance's SSH server (sshd.py) and its process side (sandbox.py).

Every server is started through the ``instance`` factory fixture, whose finalizer stops
it, so a failing test leaves no listening port and no tagged process behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snakemake_executor_plugin_vastai.simulator.sandbox import (
    TAG_VAR,
    kill_tagged,
    sandbox_env,
    spawn,
    tagged_pids,
)
from snakemake_executor_plugin_vastai.simulator.sshd import InstanceSSH

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


# --------------------------------------------------------------------------- fixtures


class ClientKey:
    """An Ed25519 client key: a 0600 file for OpenSSH, a paramiko key, the public line."""

    def __init__(self, directory: Path, name: str) -> None:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        self.path = directory / name
        self.path.write_text(pem)
        self.path.chmod(0o600)
        self.public = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        self.pkey = paramiko.Ed25519Key(file_obj=io.StringIO(pem))


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def key(keydir: Path) -> ClientKey:
    return ClientKey(keydir, "id_main")


@pytest.fixture(scope="module")
def other_key(keydir: Path) -> ClientKey:
    return ClientKey(keydir, "id_other")


Factory = Callable[..., InstanceSSH]


@pytest.fixture
def instance(tmp_path: Path, key: ClientKey) -> Iterator[Factory]:
    """Start instances (API key = ``key`` unless told otherwise); stop them all at the end."""
    started: list[InstanceSSH] = []

    def make(keys: list[str] | None = None, env: dict[str, str] | None = None) -> InstanceSSH:
        sandbox = tmp_path / f"sandbox{len(started)}"
        sandbox.mkdir()
        attached = [key.public] if keys is None else keys
        inst = InstanceSSH(
            sandbox=sandbox,
            tag=f"test-{uuid.uuid4().hex[:12]}",
            authorized_keys=lambda: attached,
            env=env,
        )
        started.append(inst)
        inst.start()
        return inst

    yield make
    leftovers = {}
    for inst in started:
        try:
            inst.stop()
        finally:
            leftovers[inst.tag] = tagged_pids(inst.tag)
            kill_tagged(inst.tag)  # clean up even if stop() is what broke
    assert not any(leftovers.values()), f"stop() left processes behind: {leftovers}"


@contextmanager
def connect(
    inst: InstanceSSH, pkey: paramiko.PKey, user: str = "root", timeout: float = 5.0
) -> Iterator[paramiko.SSHClient]:
    """A paramiko client over a TCP_NODELAY socket (paramiko never sets it itself)."""
    sock = socket.create_connection(("127.0.0.1", inst.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1",
            inst.port,
            username=user,
            pkey=pkey,
            sock=sock,
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        yield client
    finally:
        client.close()
        sock.close()


def run(client: paramiko.SSHClient, command: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Exec ``command``; feed stdin and read stdout/stderr concurrently; return all three."""
    chan = client.get_transport().open_session()  # type: ignore[union-attr]
    chan.exec_command(command)
    out: list[bytes] = []
    err: list[bytes] = []

    def feed() -> None:
        chan.sendall(stdin)
        chan.shutdown_write()

    def drain(recv: Callable[[int], bytes], into: list[bytes]) -> None:
        while data := recv(1 << 20):
            into.append(data)

    threads = [
        threading.Thread(target=feed),
        threading.Thread(target=drain, args=(chan.recv, out)),
        threading.Thread(target=drain, args=(chan.recv_stderr, err)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status = chan.recv_exit_status()
    chan.close()
    return status, b"".join(out), b"".join(err)


def openssh_opts(key: ClientKey) -> list[str]:
    return [
        "-i",
        str(key.path),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]


needs_openssh = pytest.mark.skipif(
    not (shutil.which("ssh") and shutil.which("scp") and shutil.which("sftp")),
    reason="OpenSSH client binaries (ssh, scp, sftp) not installed",
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- sandbox.py


def test_sandbox_env_puts_our_python_first(tmp_path: Path) -> None:
    env = sandbox_env(tmp_path, "t-env", {"FOO": "bar", TAG_VAR: "forged"})
    assert env["HOME"] == str(tmp_path)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith("/usr/local/bin:/usr/bin:/bin")
    assert (env["LANG"], env["USER"], env["FOO"]) == ("C.UTF-8", "root", "bar")
    assert env[TAG_VAR] == "t-env"


def test_spawn_runs_in_sandbox_with_env(tmp_path: Path) -> None:
    env = sandbox_env(tmp_path, f"t-{uuid.uuid4().hex}", None)
    proc = spawn(
        'pwd; echo "$VASTAI_SIM_TAG"; python -c "import sys; print(sys.executable)"',
        sandbox=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=20)
    lines = out.decode().splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == env[TAG_VAR]
    assert Path(lines[2]).parent == Path(sys.executable).parent
    assert os.getsid(0) != proc.pid  # new session: the simulator stays out of it


def test_kill_tagged_matches_tag_exactly(tmp_path: Path) -> None:
    base = f"x-{uuid.uuid4().hex[:8]}"
    tag, longer = f"{base}-1", f"{base}-10"
    mine = spawn("sleep 1000", sandbox=tmp_path, env=sandbox_env(tmp_path, tag, None))
    other = spawn("sleep 1000", sandbox=tmp_path, env=sandbox_env(tmp_path, longer, None))
    try:
        assert wait_for(lambda: tagged_pids(tag) and tagged_pids(longer))
        assert os.getpid() not in tagged_pids(tag)
        assert kill_tagged(tag) >= 1
        assert mine.wait(5) in (-signal.SIGTERM, -signal.SIGKILL)
        assert other.poll() is None
        assert tagged_pids(tag) == []
        assert tagged_pids(longer) != []
    finally:
        kill_tagged(longer)
        mine.wait(5)
        other.wait(5)


# --------------------------------------------------------------------------- OpenSSH interop


@needs_openssh
def test_openssh_exec(instance: Factory, key: ClientKey) -> None:
    inst = instance(env={"GREETING": "hello"})
    cmd = 'echo "$GREETING"; pwd; echo "$HOME"; echo oops >&2; exit 3'
    proc = subprocess.run(
        ["ssh", "-p", str(inst.port), *openssh_opts(key), "root@127.0.0.1", cmd],
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.decode().splitlines() == ["hello", str(inst.sandbox), str(inst.sandbox)]
    assert proc.stderr == b"oops\n"


@needs_openssh
@pytest.mark.parametrize("mode", [[], ["-O"]], ids=["sftp-mode", "legacy-mode"])
def test_openssh_scp_both_ways(
    instance: Factory, key: ClientKey, tmp_path: Path, mode: list[str]
) -> None:
    inst = instance()
    payload = os.urandom(3 * MiB + 17)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    (inst.sandbox / "dir").mkdir()
    scp = ["scp", *mode, "-P", str(inst.port), *openssh_opts(key)]

    up = subprocess.run([*scp, str(local), "root@127.0.0.1:dir/up.bin"], capture_output=True)
    assert up.returncode == 0, up.stderr
    assert md5((inst.sandbox / "dir" / "up.bin").read_bytes()) == md5(payload)

    back = tmp_path / "back.bin"
    down = subprocess.run([*scp, "root@127.0.0.1:dir/up.bin", str(back)], capture_output=True)
    assert down.returncode == 0, down.stderr
    assert md5(back.read_bytes()) == md5(payload)


@needs_openssh
def test_openssh_sftp_batch(instance: Factory, key: ClientKey, tmp_path: Path) -> None:
    inst = instance()
    (tmp_path / "a.txt").write_text("alpha\n")
    (inst.sandbox / "b.txt").write_text("beta\n")
    batch = (
        f"mkdir sub\nput {tmp_path / 'a.txt'} sub/a.txt\nls sub\nget b.txt {tmp_path / 'b.txt'}\n"
    )
    proc = subprocess.run(
        ["sftp", "-b", "-", "-P", str(inst.port), *openssh_opts(key), "root@127.0.0.1"],
        input=batch.encode(),
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert (inst.sandbox / "sub" / "a.txt").read_text() == "alpha\n"
    assert (tmp_path / "b.txt").read_text() == "beta\n"


# --------------------------------------------------------------------------- paramiko


def test_paramiko_exec_and_sftp_md5(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    payload = os.urandom(5 * MiB + 3)
    with connect(inst, key.pkey) as client:
        sftp = client.open_sftp()
        with sftp.open("blob.bin", "wb") as fh:
            fh.set_pipelined(True)
            fh.write(payload)
        status, out, _ = run(client, "md5sum blob.bin")
        assert status == 0
        assert out.split()[0].decode() == md5(payload)
        with sftp.open("blob.bin", "rb") as fh:
            fh.prefetch()
            assert md5(fh.read()) == md5(payload)
        sftp.close()
    assert inst.bytes_in >= len(payload)
    assert inst.bytes_out >= len(payload)


def test_20mib_through_cat_with_separate_stderr(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    payload = os.urandom(20 * MiB)
    with connect(inst, key.pkey) as client:
        status, out, err = run(client, "tee /dev/stderr", stdin=payload)
    assert status == 0
    assert len(out) == len(payload) and md5(out) == md5(payload)
    assert len(err) == len(payload) and md5(err) == md5(payload)


def test_concurrent_channels_keep_their_data(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    payloads = [os.urandom(2 * MiB + i) for i in range(4)]
    results: list[tuple[int, bytes, bytes] | None] = [None] * len(payloads)
    with connect(inst, key.pkey) as client:

        def one(i: int) -> None:
            results[i] = run(client, "tee /dev/stderr", stdin=payloads[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for payload, result in zip(payloads, results, strict=True):
        assert result is not None
        status, out, err = result
        assert status == 0
        assert md5(out) == md5(payload) == md5(err)


def test_stdout_and_stderr_are_distinct(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        status, out, err = run(client, "cat; head -c 100000 /dev/zero >&2", stdin=b"in\x00put")
    assert (status, out, err) == (0, b"in\x00put", b"\0" * 100000)


@pytest.mark.parametrize(("command", "expected"), [("exit 3", 3), ("kill -9 $$", 137), ("true", 0)])
def test_exit_status(instance: Factory, key: ClientKey, command: str, expected: int) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        assert run(client, command)[0] == expected


def test_shell_without_command(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.invoke_shell()
        chan.sendall(b'echo "$HOME"; exit 4\n')
        chan.shutdown_write()
        out = chan.makefile("rb").read()
        assert chan.recv_exit_status() == 4
    assert out == f"{inst.sandbox}\n".encode()


def test_client_disconnect_does_not_kill_process(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("sleep 0.5; echo survived > marker")
        time.sleep(0.1)
    assert wait_for(lambda: (inst.sandbox / "marker").exists(), timeout=5)
    assert (inst.sandbox / "marker").read_text() == "survived\n"


# --------------------------------------------------------------------------- auth


def test_wrong_key_or_user_refused(instance: Factory, key: ClientKey, other_key: ClientKey) -> None:
    inst = instance()
    with pytest.raises(paramiko.AuthenticationException), connect(inst, other_key.pkey):
        pass
    with pytest.raises(paramiko.AuthenticationException), connect(inst, key.pkey, user="ubuntu"):
        pass


def test_key_from_sandbox_authorized_keys(instance: Factory, key: ClientKey) -> None:
    inst = instance(keys=[])
    with pytest.raises(paramiko.AuthenticationException), connect(inst, key.pkey):
        pass
    ssh_dir = inst.sandbox / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "authorized_keys").write_text(f"# written by onstart\nno-pty {key.public} me@x\n")
    with connect(inst, key.pkey) as client:
        assert run(client, "echo ok")[:2] == (0, b"ok\n")


# --------------------------------------------------------------------------- SFTP confinement


def test_sftp_confined_to_sandbox(instance: Factory, key: ClientKey, tmp_path: Path) -> None:
    inst = instance()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (inst.sandbox / "inside.txt").write_text("inside")
    (inst.sandbox / "escape").symlink_to(secret)
    (inst.sandbox / "escape_dir").symlink_to(tmp_path)
    (inst.sandbox / "ok_link").symlink_to(inst.sandbox / "inside.txt")
    with connect(inst, key.pkey) as client:
        sftp = client.open_sftp()
        assert sftp.normalize(".") == "/"
        assert sftp.open("inside.txt").read() == b"inside"
        assert sftp.open("ok_link").read() == b"inside"
        assert sftp.open("/../../inside.txt").read() == b"inside"  # '..' stops at the root
        for path in (
            "../secret.txt",
            "../../secret.txt",
            str(secret),
            "escape",
            "escape_dir/secret.txt",
            "/escape",
        ):
            with pytest.raises(OSError):
                sftp.open(path).read()
        with pytest.raises(OSError):
            sftp.listdir("escape_dir")
        with pytest.raises(OSError):
            sftp.open("escape", "w").write("overwrite")
        assert sftp.lstat("escape").st_size is not None  # the link itself may be looked at
        sftp.remove("escape")  # and removed; its target stays
        sftp.close()
    assert secret.read_text() == "outside"
    assert not (inst.sandbox / "escape").is_symlink()


def test_instances_cannot_see_each_other(instance: Factory, key: ClientKey) -> None:
    first, second = instance(), instance()
    with connect(first, key.pkey) as client:
        sftp = client.open_sftp()
        sftp.open("mine.txt", "w").write("first")
        sftp.close()
    rel = os.path.relpath(first.sandbox / "mine.txt", second.sandbox)
    with connect(second, key.pkey) as client:
        sftp = client.open_sftp()
        assert "mine.txt" not in sftp.listdir(".")
        for path in ("mine.txt", rel, str(first.sandbox / "mine.txt")):
            with pytest.raises(OSError):
                sftp.stat(path)
        sftp.close()


# --------------------------------------------------------------------------- faults


def test_refuse_then_recover(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    inst.faults.refuse_until = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises((paramiko.SSHException, OSError, EOFError)), connect(inst, key.pkey):
        pass
    assert time.monotonic() - started < 1.0  # refused promptly, not timed out
    time.sleep(max(0.0, inst.faults.refuse_until - time.monotonic()))
    with connect(inst, key.pkey) as client:
        assert run(client, "echo back")[:2] == (0, b"back\n")


def test_not_accepting_refuses(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    inst.set_accepting(False)
    with pytest.raises((paramiko.SSHException, OSError, EOFError)), connect(inst, key.pkey):
        pass
    inst.set_accepting(True)
    with connect(inst, key.pkey) as client:
        assert run(client, "true")[0] == 0


def test_drop_after_bytes_kills_exec_transfer_then_recovers(
    instance: Factory, key: ClientKey
) -> None:
    inst = instance()
    inst.faults.drop_after_bytes = 1 * MiB
    received = 0
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("head -c 16777216 /dev/zero")
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            while data := chan.recv(1 << 20):
                received += len(data)
            if not client.get_transport().is_active():  # type: ignore[union-attr]
                raise EOFError("transport dropped")
        assert received <= 1 * MiB
        assert chan.recv_exit_status() == -1  # no exit status: the connection just died
    assert inst.faults.drop_after_bytes is None  # one-shot
    with connect(inst, key.pkey) as client:
        status, out, _ = run(client, "head -c 4194304 /dev/zero")
    assert (status, len(out)) == (0, 4 * MiB)


def test_drop_after_bytes_kills_sftp_upload(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    inst.faults.drop_after_bytes = 512 * 1024
    with connect(inst, key.pkey) as client:
        sftp = client.open_sftp()
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.putfo(io.BytesIO(os.urandom(4 * MiB)), "big.bin")
    assert (inst.sandbox / "big.bin").stat().st_size <= 512 * 1024
    with connect(inst, key.pkey) as client:
        assert run(client, "echo fine")[:2] == (0, b"fine\n")


def test_drop_after_seconds(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    inst.faults.drop_after_seconds = 0.3
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        started = time.monotonic()
        chan.exec_command("sleep 5")
        assert chan.recv_exit_status() == -1
        assert time.monotonic() - started < 3
    with connect(inst, key.pkey) as client:
        assert run(client, "true")[0] == 0


# --------------------------------------------------------------------------- lifecycle


def test_stop_kills_detached_processes_and_frees_port(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        status, _, _ = run(client, "setsid sh -c 'sleep 1000' >/dev/null 2>&1 </dev/null &")
        assert status == 0
    assert wait_for(lambda: bool(tagged_pids(inst.tag)))
    inst.stop()
    assert tagged_pids(inst.tag) == []
    assert port_is_closed(inst.port)
    inst.stop()  # idempotent


def test_stop_drops_open_connections(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("sleep 1000")
        assert wait_for(lambda: bool(tagged_pids(inst.tag)))
        inst.stop()
        assert chan.recv_exit_status() in (-1, 143, 137)
        assert wait_for(lambda: not client.get_transport().is_active())  # type: ignore[union-attr]
    assert tagged_pids(inst.tag) == []


def test_kill_processes_kills_foreground_job(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("sleep 1000")
        assert wait_for(lambda: bool(tagged_pids(inst.tag)))
        assert inst.kill_processes() >= 1
        assert chan.recv_exit_status() == 137
        assert run(client, "echo still serving")[:2] == (0, b"still serving\n")


def test_rotate_host_key(instance: Factory, key: ClientKey) -> None:
    inst = instance()

    def seen() -> str:
        with connect(inst, key.pkey) as client:
            remote = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
            return f"{remote.get_name()} {remote.get_base64()}"

    before = inst.host_key_public
    assert before.startswith("ssh-ed25519 AAAA")
    assert seen() == before
    inst.rotate_host_key()
    assert inst.host_key_public != before
    assert seen() == inst.host_key_public


def test_restart_keeps_port_and_env_changes_apply(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    port = inst.port
    inst.stop()
    inst.env["LATE"] = "set after construction"  # the REST side adds VAST_TCP_PORT_22 so
    assert inst.start() == port
    with connect(inst, key.pkey) as client:
        assert run(client, 'echo "$LATE"')[:2] == (0, b"set after construction\n")


def test_drop_connections_cuts_established_sessions(instance: Factory, key: ClientKey) -> None:
    inst = instance()
    with connect(inst, key.pkey) as client:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("sleep 2; echo late")
        time.sleep(0.1)
        assert inst.drop_connections() == 1
        assert chan.recv_exit_status() == -1
    with connect(inst, key.pkey) as client:
        assert run(client, "true")[0] == 0
