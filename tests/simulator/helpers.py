"""Shared helpers of the simulator tests: the real SDK, waiting, an SSH client."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import vastai
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snakemake_executor_plugin_vastai.simulator.server import Simulator

IMAGE = "vastai/pytorch:2.4.1-cuda-12.4.1"


def sdk(sim: Simulator, **kw: Any) -> vastai.VastAI:
    """The official SDK aimed at the simulator (raw dicts, no retries unless asked)."""
    kw.setdefault("retry", 1)
    return vastai.VastAI(api_key=sim.api_key, server_url=sim.url, raw=True, quiet=True, **kw)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def wait_status(api: vastai.VastAI, iid: int, status: str | None, timeout: float = 10.0) -> dict:
    """Poll ``show_instance`` until ``actual_status`` is ``status``; return the row."""

    def check() -> dict | None:
        row = api.show_instance(iid)
        return row if row is not None and row["actual_status"] == status else None

    return wait_for(check, timeout)


def cheapest(api: vastai.VastAI, query: str = "num_gpus=1") -> dict:
    offers = api.search_offers(query, order="dph_total", limit=1)
    assert offers, f"no offer for {query!r}"
    return offers[0]


def rent(api: vastai.VastAI, query: str = "num_gpus=1", **create: Any) -> int:
    """Rent the cheapest offer matching ``query``; return the instance id."""
    create.setdefault("image", IMAGE)
    answer = api.create_instance(cheapest(api, query)["id"], **create)
    assert answer["success"] is True
    return int(answer["new_contract"])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ClientKey:
    """An Ed25519 key pair for logging in to instances with paramiko."""

    def __init__(self, directory: Path) -> None:
        key = Ed25519PrivateKey.generate()
        self.path = directory / "id_ed25519"
        self.path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        self.path.chmod(0o600)
        public = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        self.public = f"{public} test@sim"

    def run(self, port: int, command: str, timeout: float = 10.0) -> tuple[int, str, str]:
        """Run ``command`` over SSH as root; (exit status, stdout, stderr)."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=port,
            username="root",
            key_filename=str(self.path),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        try:
            _, out, err = client.exec_command(command, timeout=timeout)
            status = out.channel.recv_exit_status()
            if status == -1:
                raise EOFError("the SSH connection was lost before the command's exit status")
            return status, out.read().decode(), err.read().decode()
        finally:
            client.close()

    def host_key(self, port: int) -> str:
        """The server's host key (base64) as a client sees it."""
        transport = paramiko.Transport(("127.0.0.1", port))
        try:
            transport.start_client(timeout=10)
            return transport.get_remote_server_key().get_base64()
        finally:
            transport.close()
