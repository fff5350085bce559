"""Figure 4: the plugin's file transfer against OpenSSH ``scp`` and a plain ``cp``.

All three move the same bytes to and from the same simulated instance in one
run, interleaved (the order rotates every repeat), so machine noise hits them
alike:

- plugin: ``RemoteSession.connect`` + ``upload``/``download`` (one tar stream
  through one exec channel), with a per-run Ed25519 key from ``keys.py``;
- scp: the OpenSSH client with its defaults (SFTP protocol), same key, same
  server; ``-r`` for the many small files;
- cp: a local copy into/out of the instance's sandbox directory: the floor of
  what moving the bytes costs on this machine without SSH.

Connecting is part of each timed operation (scp has to connect too). The
simulator runs in its own process (see ``simproc``), so the SSH server does not
share a GIL with the paramiko client. Data and the instance's sandbox live on
tmpfs (``/dev/shm``) when it has room: writing gigabytes to this VM's disk
soon runs into dirty-page write-back throttling, and the figure would time the
disk instead of the SSH path (``cp`` of 5,000 small files then took 11 s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snakemake_executor_plugin_vastai.run.keys import (
    generate_keypair,
    load_private_key,
    write_private_key,
)
from snakemake_executor_plugin_vastai.transports.ssh.channels import Endpoint
from snakemake_executor_plugin_vastai.transports.ssh.paths import AllowedPaths
from snakemake_executor_plugin_vastai.transports.ssh.session import RemoteSession

from .simproc import SimProcess

MiB = 1024 * 1024
BLOCK = 16 * MiB
SMALL_SIZE = 4096
BOOT_TIMEOUT = 60.0
METHODS = ("plugin", "scp", "cp")
# The plugin offers AES-GCM first (transports/ssh/session.FAST_CIPHERS); OpenSSH would pick
# chacha20-poly1305, which the simulator's asyncssh server runs much slower.
# Same cipher on both sides, so the figure compares transfer designs, not ciphers.
SCP_CIPHER = "aes128-gcm@openssh.com"


@dataclass(frozen=True)
class Instance:
    """A rented simulated instance we can reach over SSH and see on disk."""

    instance_id: int
    endpoint: Endpoint
    sandbox: Path


@dataclass(frozen=True)
class Sizes:
    big_bytes: int
    small_files: int


def rent(sim: SimProcess, public_line: str) -> Instance:
    """Rent the first offer by hand, authorise our key, wait until SSH is up."""
    offer = sim.call("POST", "/api/v0/bundles/", {"limit": 1})["offers"][0]
    iid = int(sim.call("PUT", f"/api/v0/asks/{offer['id']}/",
                       {"image": "bench/transfer", "label": "bench-transfer",
                        "runtype": "ssh"})["new_contract"])
    sim.call("POST", f"/api/v0/instances/{iid}/ssh/", {"ssh_key": public_line})
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        row = sim.call("GET", f"/api/v0/instances/{iid}/")["instances"] or {}
        port = ((row.get("ports") or {}).get("22/tcp") or [{}])[0].get("HostPort")
        if row.get("actual_status") == "running" and port:
            sandbox = next(Path(i["sandbox"]) for i in sim.truth()["instances"]
                           if int(i["id"]) == iid)
            return Instance(iid, Endpoint(str(row["public_ipaddr"]), int(port)), sandbox)
        time.sleep(0.1)
    raise RuntimeError(f"instance {iid} did not come up within {BOOT_TIMEOUT:.0f} s")


# --------------------------------------------------------------------------- data


def make_data(root: Path, sizes: Sizes) -> tuple[Path, Path]:
    """One big file (random blocks: nothing compresses) and a tree of small files."""
    root.mkdir(parents=True, exist_ok=True)
    big = root / "big.bin"
    block = os.urandom(BLOCK)
    with open(big, "wb") as out:
        left = sizes.big_bytes
        while left:
            n = min(left, BLOCK)
            out.write(block[:n])
            left -= n
    small = root / "small"
    for i in range(sizes.small_files):
        path = small / f"d{i // 100:03d}" / f"f{i:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(SMALL_SIZE))
    return big, small


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_facts(root: Path) -> tuple[int, int]:
    """(number of files, total bytes) below ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# --------------------------------------------------------------------------- the methods


@dataclass
class Mover:
    """Moves data one way with one method; ``run`` returns the seconds it took."""

    inst: Instance
    key_path: Path
    pkey: object

    def ssh_opts(self) -> list[str]:
        """Batch mode, throwaway host key, and the plugin's cipher (fair comparison)."""
        return ["-q", "-B", "-c", SCP_CIPHER, "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-i", str(self.key_path), "-P", str(self.inst.endpoint.port)]

    def remote(self, rel: str) -> str:
        return f"root@{self.inst.endpoint.host}:{rel}"

    def session(self) -> RemoteSession:
        return RemoteSession.connect(self.inst.endpoint, self.pkey, pinned_host_key=None)

    # uploads: local ``src`` (file or dir) to ``xfer/<dest>`` in the sandbox
    def up(self, method: str, src: Path, dest: str) -> float:
        start = time.perf_counter()
        if method == "plugin":
            with self.session() as s:
                s.upload([(src, src.name)], f"xfer/{dest}")
        elif method == "scp":
            self._sandbox(f"xfer/{dest}").mkdir(parents=True, exist_ok=True)
            _run(["scp", *self.ssh_opts(), *(["-r"] if src.is_dir() else []), str(src),
                  self.remote(f"xfer/{dest}/{src.name}")])
        else:
            target = self._sandbox(f"xfer/{dest}")
            target.mkdir(parents=True, exist_ok=True)
            _run(["cp", *(["-r"] if src.is_dir() else []), str(src), str(target / src.name)])
        return time.perf_counter() - start

    # downloads: ``xfer/src/<name>`` in the sandbox to local ``dest/<name>``
    def down(self, method: str, name: str, dest: Path, is_dir: bool) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if method == "plugin":
            allowed = AllowedPaths([], [name]) if is_dir else AllowedPaths([name], [])
            with self.session() as s:
                s.download("xfer/src", [name], dest, allowed=allowed)
        elif method == "scp":
            _run(["scp", *self.ssh_opts(), *(["-r"] if is_dir else []),
                  self.remote(f"xfer/src/{name}"), str(dest / name)])
        else:
            _run(["cp", *(["-r"] if is_dir else []), str(self._sandbox(f"xfer/src/{name}")),
                  str(dest / name)])
        return time.perf_counter() - start

    def _sandbox(self, rel: str) -> Path:
        return self.inst.sandbox / rel


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[:400]}")


def default_cipher(mover: Mover) -> str:
    """The cipher OpenSSH would negotiate by default with the simulated sshd (for the notes)."""
    argv = ["ssh", "-v", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-i", str(mover.key_path),
            "-p", str(mover.inst.endpoint.port), f"root@{mover.inst.endpoint.host}", "true"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    for line in done.stderr.splitlines():
        if "kex: server->client cipher:" in line:
            return line.split("cipher:", 1)[1].split()[0]
    return "unknown"


# --------------------------------------------------------------------------- the figure


@dataclass
class Trials:
    """Seconds per (case, method), one entry per repeat."""

    seconds: dict[tuple[str, str], list[float]]
    sizes: Sizes
    openssh_default_cipher: str


def scratch_dir(base: Path, sizes: Sizes) -> Path:
    """Somewhere in RAM for the data if there is room for about five copies, else ``base``."""
    shm = Path("/dev/shm")
    need = 5 * sizes.big_bytes + 4 * sizes.small_files * SMALL_SIZE
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > need:
            return shm / f"vastai-bench-{os.getpid()}"
    except OSError:
        pass
    return base


def measure(base: Path, sizes: Sizes, repeats: int, log: Callable[[str], None]) -> Trials:
    """Every case x method x repeat, order rotating (on tmpfs if possible)."""
    root = scratch_dir(base, sizes)
    try:
        return _measure(root, sizes, repeats, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(base: Path, sizes: Sizes, repeats: int, log: Callable[[str], None]) -> Trials:
    """Every case x method x repeat, order rotating; data checked after every move."""
    shutil.rmtree(base, ignore_errors=True)
    big, small = make_data(base / "data", sizes)
    big_hash = sha256(big)
    pem, public = generate_keypair("bench-transfer")
    key_path = base / "keys" / "id_ed25519"
    write_private_key(key_path, pem)
    seconds: dict[tuple[str, str], list[float]] = {}
    with SimProcess(base / "sim", state_dir=base / "sim-state") as sim:
        inst = rent(sim, public)
        mover = Mover(inst, key_path, load_private_key(key_path))
        source = inst.sandbox / "xfer" / "src"
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(big, source / "big.bin")
        shutil.copytree(small, source / "small")
        cipher = default_cipher(mover)
        for r in range(repeats):
            order = METHODS[r % 3:] + METHODS[:r % 3]
            log(f"  transfer repeat {r + 1}/{repeats}, order {', '.join(order)}")
            for method in order:
                tag = f"{method}-{r}"
                _trial(seconds, ("big-up", method), lambda m=method, t=tag: mover.up(m, big, t))
                full = r == 0 and method == "plugin"  # hashing 1 GiB is slow: plugin only
                _check_file(inst.sandbox / "xfer" / tag / "big.bin", sizes, big_hash, full)
                _trial(seconds, ("small-up", method),
                       lambda m=method, t=tag: mover.up(m, small, t))
                _check_tree(inst.sandbox / "xfer" / tag / "small", sizes)
                shutil.rmtree(inst.sandbox / "xfer" / tag)
                here = base / "down" / tag
                _trial(seconds, ("big-down", method),
                       lambda m=method, h=here: mover.down(m, "big.bin", h, False))
                _check_file(here / "big.bin", sizes, big_hash, full)
                _trial(seconds, ("small-down", method),
                       lambda m=method, h=here: mover.down(m, "small", h, True))
                _check_tree(here / "small", sizes)
                shutil.rmtree(here)
    return Trials(seconds, sizes, cipher)


def _trial(seconds: dict[tuple[str, str], list[float]], key: tuple[str, str],
           action: Callable[[], float]) -> None:
    seconds.setdefault(key, []).append(action())


def _check_file(path: Path, sizes: Sizes, digest: str, full: bool) -> None:
    """Right size always; right content when ``full`` (hashing is slow)."""
    if path.stat().st_size != sizes.big_bytes:
        raise RuntimeError(f"{path}: {path.stat().st_size} bytes, expected {sizes.big_bytes}")
    if full and sha256(path) != digest:
        raise RuntimeError(f"{path}: content differs from the source")


def _check_tree(path: Path, sizes: Sizes) -> None:
    count, total = tree_facts(path)
    if (count, total) != (sizes.small_files, sizes.small_files * SMALL_SIZE):
        raise RuntimeError(f"{path}: {count} files / {total} bytes, expected "
                           f"{sizes.small_files} / {sizes.small_files * SMALL_SIZE}")
