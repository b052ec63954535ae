"""Durable tunnels (issue 18): open TCP connections survive a cut of the path, the
rebuild of the peer connection, and the move from the relay to the direct path; a cut
longer than --resume-timeout ends them as before. Real namespaces, iptables cuts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import sshd
from tests.natlab.conftest import HERE
from tests.natlab.test_soak import status

MB = 1024 * 1024


def pair(lab_run: Any, service: list[str] | None, port: int, *connect_args: str,
         nats: tuple[str, str] = ("port-restricted", "port-restricted"),
         share_args: tuple[str, ...] = (), before: Any = None) -> tuple[Any, Any, Any]:
    """A lab, ``service`` (a command, run in side a) on ``port``, a share of it in a and a
    connect to it on b's 127.0.0.1:9000. Returns (run, share, connect)."""
    run = lab_run(*nats)
    if before is not None:
        before(run)
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    if service is not None:
        proc = subprocess.Popen(run.lab.exec_prefix(a.host_ns) + service,
                                stdout=subprocess.PIPE, text=True)
        run.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    share = run.mesh(a.host_ns, "a", "share", str(port), "--signal", url, "--json",
                     *share_args)
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json",
                    *connect_args)
    conn.event("connected", timeout=40)
    return run, share, conn


def in_b(run: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(run.lab.exec_prefix(run.lab.sides["b"].host_ns) + [
        sys.executable, *args], stdout=subprocess.PIPE, text=True)


def cut(run: Any, after: float, seconds: float) -> None:
    time.sleep(after)
    run.lab.cut("b")
    time.sleep(seconds)
    run.lab.restore("b")


def test_a_slow_50_mb_download_survives_a_15_s_cut(lab_run: Any) -> None:
    size = 50 * MB
    run, share, conn = pair(lab_run, [sys.executable, str(HERE / "slowdownload.py"), "serve",
                                      "7100", str(size)], 7100)
    reader = in_b(run, str(HERE / "slowdownload.py"), "read", "9000", str(size), "30")
    cut(run, 8, 15)
    out, _ = reader.communicate(timeout=180)
    got = json.loads(out)
    assert (got["received"], got["corrupt"], got["ended"]) == (size, False, "eof"), got
    lost = conn.event("disconnected", timeout=10)
    assert lost["waiting"] == 1, lost
    resumed = conn.event("resumed", timeout=10)
    assert resumed["streams"] == 1 and resumed["gap_ms"] > 8000, resumed
    assert share.event("resumed", timeout=10)["streams"] == 1
    print(f"50 MB over {got['seconds']} s across a 15 s cut; resumed after "
          f"{resumed['gap_ms']:.0f} ms (cut at 8 s, restored at 23 s)")


def test_an_interactive_ssh_session_carries_on_after_a_cut(lab_run: Any, tmp_path: Path
                                                           ) -> None:
    if sshd.tools() is None:
        pytest.skip("OpenSSH is not installed")
    keys = tmp_path / "ssh"
    sshd.config(keys, "127.0.0.1", 2222)
    run, _, conn = pair(lab_run, None, 2222)
    a = run.lab.sides["a"]
    daemon = subprocess.Popen(run.lab.exec_prefix(a.host_ns) + sshd.daemon(keys),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run.procs.append(daemon)
    time.sleep(0.5)
    counter = "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); sleep 0.5; done"
    session = subprocess.Popen(run.lab.exec_prefix(run.lab.sides["b"].host_ns) + sshd.client(
        keys, 9000, "127.0.0.1", "-T", command=counter), stdout=subprocess.PIPE, text=True,
        stderr=subprocess.PIPE)
    cut(run, 6, 15)
    out, err = session.communicate(timeout=120)
    assert session.returncode == 0, err
    assert out.splitlines() == [f"line {i}" for i in range(60)], out
    assert conn.event("resumed", timeout=10)["streams"] == 1


def test_a_stream_on_the_relay_moves_to_the_direct_path(lab_run: Any) -> None:
    run, _, conn = pair(lab_run, [sys.executable, str(HERE / "echo.py"), "7000"], 7000,
                        "--retry-direct", "3",
                            before=lambda r: r.lab.block_udp_between_sides(True))
    assert conn.events[-1]["path"] == "relay"
    streamer = in_b(run, str(HERE / "streamer.py"), "9000", "15", "300000")
    time.sleep(3)
    run.lab.block_udp_between_sides(False)
    upgraded = conn.event("connected", timeout=40)
    assert upgraded["path"] == "direct" and upgraded["attempt"] == "upgrade", upgraded
    resumed = conn.event("resumed", timeout=20)
    assert resumed["streams"] == 1, resumed
    out, _ = streamer.communicate(timeout=120)
    got = json.loads(out)
    assert not got["corrupt"] and got["received"] == got["sent"] and got["ended"] == "eof", got
    # the relay link was closed at once, not kept for the stream
    snap = status(run, run.lab.sides["a"].host_ns, "a")
    assert [p["path"] for p in snap["peers"]] == ["direct"], snap["peers"]
    print(f"moved relay -> direct in {resumed['gap_ms']:.0f} ms, {got['sent']} B exact")


def test_a_cut_longer_than_the_resume_timeout_ends_streams_cleanly(lab_run: Any) -> None:
    run, _, conn = pair(lab_run, [sys.executable, str(HERE / "echo.py"), "7000"], 7000,
                        "--resume-timeout", "5", share_args=("--resume-timeout", "5"))
    streamer = in_b(run, str(HERE / "streamer.py"), "9000", "40", "100000")
    started = time.monotonic()
    cut(run, 3, 14)
    out, _ = streamer.communicate(timeout=120)
    got = json.loads(out)
    assert not got["corrupt"] and got["ended"].startswith("error"), got
    assert time.monotonic() - started < 30  # ended by the timeout, not by the 40 s run
    assert conn.event("disconnected", timeout=10)["waiting"] == 1
    assert not [e for e in conn.events if e["event"] == "resumed"]
    deadline = time.monotonic() + 45  # and the tunnel itself is back for new connections
    while not run.client(run.lab.sides["b"].host_ns, 9000, MB)["ok"]:
        assert time.monotonic() < deadline
        time.sleep(1)
    snap = status(run, run.lab.sides["a"].host_ns, "a")
    assert snap["streams_waiting"] == 0, snap


def test_200_streams_wait_through_a_cut_in_bounded_memory(lab_run: Any) -> None:
    run, share, conn = pair(lab_run, [sys.executable, str(HERE / "echo.py"), "7000"], 7000)
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    streamer = in_b(run, str(HERE / "streamer.py"), "9000", "30", "20000", "200")
    time.sleep(6)
    run.lab.cut("b")
    time.sleep(10)
    during = status(run, b.host_ns, "b"), status(run, a.host_ns, "a")
    rss = [rss_mb(conn.p.pid), rss_mb(share.p.pid)]
    run.lab.restore("b")
    out, _ = streamer.communicate(timeout=240)
    streams = json.loads(out)["streams"]
    bad = [s for s in streams if s["corrupt"] or s["received"] != s["sent"]
           or s["ended"] != "eof"]
    assert len(streams) == 200 and not bad, bad[:3]
    assert during[0]["streams_waiting"] == 200, during[0]
    held = [d["resume_held_bytes"] for d in during]
    print(f"200 streams waiting: held {held[0] / MB:.1f} MiB (connect) and "
          f"{held[1] / MB:.1f} MiB (share) for a resume; RSS {rss[0]:.0f} and {rss[1]:.0f} MiB")
    assert max(rss) < 300, rss


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
