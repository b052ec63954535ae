"""The README's quick start, run as written (issue 21: a doc test, so it cannot drift).

The commands are taken from the README's code block itself. Only what a test must
change is changed: the three ports become free ones (tests never take fixed ports),
the connect line gets the ticket the share printed in place of ``mesh1...``, and
``MESH_LAN=off`` keeps mDNS off the host's network. Each command runs through bash,
the long-running ones in the background as the README's terminals would hold them,
and curl's answer must be the directory listing the http.server serves.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## 60-second quick start", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_quick_start_block_is_what_this_test_expects() -> None:
    lines = quick_start()
    assert [line.split()[0] for line in lines] == [
        "mesh", "python3", "MESH_ICE_ADDRESSES=127.0.0.1", "MESH_HOME=$(mktemp", "curl"]
    assert "mesh1..." in lines[3] and lines[1].endswith("&")


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("mesh") is None,
                    reason="needs curl and the installed mesh command")
def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    ports = {"8765": free_port(), "8000": free_port(), "9000": free_port()}

    def adapt(line: str) -> str:
        for fixed, free in ports.items():
            line = re.sub(rf"(?<![0-9]){fixed}(?![0-9])", str(free), line)
        return line.removesuffix("&").strip()

    env = {**os.environ, "MESH_HOME": str(tmp_path / "home"), "MESH_LAN": "off"}
    env.pop("MESH_SIGNAL", None)
    env.pop("MESH_ICE_ADDRESSES", None)
    signal_cmd, http_cmd, share_cmd, connect_cmd, curl_cmd = (adapt(x) for x in quick_start())
    signal_cmd += f" --stun-port {free_port()}"  # the default 3478 is a fixed port
    procs: list[subprocess.Popen[str]] = []

    def start(cmd: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["bash", "-c", cmd], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start(signal_cmd)
        assert wait_port(ports["8765"], 30)
        start(http_cmd)
        assert wait_port(ports["8000"], 30)
        share = start(share_cmd)
        assert share.stdout is not None
        ticket = None
        deadline = time.monotonic() + 60
        while ticket is None and time.monotonic() < deadline:
            line = share.stdout.readline()
            assert line, f"the share ended before printing a ticket: {share_cmd!r}"
            found = re.search(r"mesh connect (mesh1[a-z2-7]+)", line)
            ticket = found.group(1) if found else None
        assert ticket is not None
        start(connect_cmd.replace("mesh1...", ticket))
        assert wait_port(ports["9000"], 60)
        res = subprocess.run(["bash", "-c", curl_cmd], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "Directory listing" in res.stdout, res
    except AssertionError:
        for proc in procs:  # what each command printed, for the failure report
            if proc.poll() is not None and proc.stdout is not None:
                print(proc.args, proc.returncode, proc.stdout.read())
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
