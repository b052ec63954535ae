"""A throwaway OpenSSH server and client keys, for the durable-tunnel tests and the
benchmarks' ``ssh -R`` baseline (one place, not one per user).

``keys(d)`` makes a host and a client key in ``d`` (once); ``config(d, host, port)``
writes an sshd_config that takes the client key for root only; ``client(d, port, host)``
is the ssh command line for it (no host key checks: the server is the test's own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def tools() -> tuple[str, str, str] | None:
    """(sshd, ssh, ssh-keygen), or None when OpenSSH is not installed."""
    found = [shutil.which(x) for x in ("sshd", "ssh", "ssh-keygen")]
    if not all(found):
        return None
    sshd, ssh, keygen = found
    assert sshd and ssh and keygen
    return sshd, ssh, keygen


def keys(d: Path) -> None:
    found = tools()
    assert found is not None, "OpenSSH is not installed"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        if not (d / name).exists():
            subprocess.run([found[2], "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True)
    shutil.copy(d / "client.pub", d / "authorized_keys")


def config(d: Path, host: str, port: int, extra: str = "") -> Path:
    """An sshd_config in ``d`` listening on ``host:port``; the keys are made if missing."""
    keys(d)
    path = d / "sshd_config"
    path.write_text(
        f"ListenAddress {host}\nPort {port}\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / 'sshd.pid'}\nAllowTcpForwarding yes\nPermitRootLogin yes\n{extra}")
    os.makedirs("/run/sshd", exist_ok=True)
    return path


def daemon(d: Path) -> list[str]:
    """The command that runs the server of ``config(d, ...)`` in the foreground."""
    found = tools()
    assert found is not None
    return [found[0], "-D", "-e", "-f", str(d / "sshd_config")]


def client(d: Path, port: int, host: str = "127.0.0.1", *options: str,
           command: str | None = None) -> list[str]:
    """``ssh`` with ``options`` to root@host:port with the client key of ``d``, running
    ``command`` there if given."""
    found = tools()
    assert found is not None
    return [found[1], "-i", str(d / "client"), "-p", str(port), "-o",
            "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
            "LogLevel=ERROR", "-o", "BatchMode=yes", *options, f"root@{host}",
            *([command] if command is not None else [])]
