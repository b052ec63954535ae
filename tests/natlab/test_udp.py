"""UDP shares in the NAT lab: dnsmasq and CoAP across a symmetric NAT pair (the relay
carries them), and numbered datagrams across 1% random loss (iptables statistic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import udpservices as u
from tests.natlab.conftest import HERE
from tests.natlab.lab import sh
from tests.natlab.test_lan import lan, ls

__all__ = ["lan"]  # the LAN fixture, used here too


def in_ns(run: Any, ns: str, code: str) -> Any:
    """Run Python ``code`` (which prints JSON) in namespace ``ns``; its output, parsed."""
    res = subprocess.run([*run.lab.exec_prefix(ns), sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=180,
                         env={**run.env("x"), "PYTHONPATH": str(HERE.parent.parent)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_dns_and_coap_across_a_symmetric_nat_pair(lab_run: Any, tmp_path: Path) -> None:
    run = lab_run("symmetric", "symmetric")
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    pa, pb = run.lab.exec_prefix(a.host_ns), run.lab.exec_prefix(b.host_ns)
    dnsmasq = u.start_dnsmasq(tmp_path, 5300, prefix=pa)
    run.procs.append(dnsmasq)
    run.procs.append(u.start_coap(5683, prefix=pa))
    for port, local in ((5300, 9053), (5683, 9683)):
        share = run.mesh(a.host_ns, f"a{port}", "share", str(port), "--udp", "--signal", url,
                         "--json")
        ticket = share.event("ready", timeout=30)["ticket"]
        conn = run.mesh(b.host_ns, f"b{port}", "connect", ticket, "--port", str(local),
                        "--json")
        assert conn.event("listening", timeout=30)["proto"] == "udp"
        assert conn.event("connected", timeout=40)["path"] == "relay"
    assert u.dig(9053, u.A_NAME, "A", prefix=pb) == [u.A_ADDR]
    assert u.dig(9053, u.A_NAME, "AAAA", prefix=pb) == [u.AAAA_ADDR]
    assert u.dig(9053, u.TXT_NAME, "TXT", prefix=pb) == [f'"{u.TXT}"']
    stats = in_ns(run, b.host_ns, "import json; from tests.udpservices import many_queries; "
                                  "print(json.dumps(many_queries('127.0.0.1', 9053)))")
    assert stats["answered"] == 1000 and stats["misdirected"] == stats["wrong"] == 0, stats
    got = u.coap_session("127.0.0.1", 9683, prefix=pb)
    assert got["PUT"] == "2.04 Changed stored set through mesh"
    assert got["GET2"] == "2.05 Content set through mesh"
    assert len(got["OBSERVE"].split()) == 20


def test_one_percent_loss_loses_one_percent_and_duplicates_nothing(lab_run: Any) -> None:
    """Side b's host drops 1% of the UDP it sends (the tunnel's packets toward a):
    5,000 numbered 1,000-byte datagrams arrive at 99% +-1, none of them twice."""
    run = lab_run("none", "none")
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    sink = subprocess.Popen([*run.lab.exec_prefix(a.host_ns), sys.executable,
                             str(HERE / "udpcount.py"), "sink", "7000"],
                            stdout=subprocess.PIPE, text=True)
    run.procs.append(sink)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    share = run.mesh(a.host_ns, "a", "share", "7000", "--udp", "--signal", url, "--json")
    conn = run.mesh(b.host_ns, "b", "connect", share.event("ready", timeout=30)["ticket"],
                    "--port", "9000", "--json")
    assert conn.event("connected", timeout=40)["path"] == "direct"
    sh("ip", "netns", "exec", b.host_ns, "iptables", "-A", "OUTPUT", "-o", "wan0", "-p", "udp",
       "-d", a.host_ip, "-m", "statistic", "--mode", "random", "--probability", "0.01",
       "-j", "DROP")
    subprocess.run([*run.lab.exec_prefix(b.host_ns), sys.executable, str(HERE / "udpcount.py"),
                    "send", "9000", "5000", "2000", "1000"], check=True, timeout=60)
    out, _ = sink.communicate(timeout=30)
    counts = json.loads(out)
    ratio = counts["unique"] / 5000
    print(f"1% loss: {counts['unique']} of 5000 arrived ({ratio:.2%}), "
          f"{counts['duplicates']} duplicates")
    assert counts["duplicates"] == 0, counts
    assert 0.98 <= ratio <= 0.998, counts  # some lost: nothing was retransmitted


def test_a_udp_share_found_by_name_on_the_lan(lan: Any, tmp_path: Path) -> None:
    """No server anywhere: the advert says the share is UDP, `mesh ls` shows it, and
    `mesh connect NAME` listens on UDP and carries dnsmasq's answers."""
    run, (a, b, _) = lan
    run.procs.append(u.start_dnsmasq(tmp_path, 5300, prefix=run.lab.exec_prefix(a)))
    share = run.mesh(a, "a", "share", "5300", "--udp", "--name", "bench-dns", "--json")
    assert share.event("ready", timeout=30)["proto"] == "udp"
    (listed,) = ls(run, b, timeout=2.5)
    assert (listed["name"], listed["proto"]) == ("bench-dns", "udp")
    conn = run.mesh(b, "b", "connect", "bench-dns", "--port", "9053", "--json")
    assert conn.event("listening", timeout=30)["proto"] == "udp"
    assert conn.event("connected", timeout=30)["path"] == "direct"
    assert u.dig(9053, u.TXT_NAME, "TXT", prefix=run.lab.exec_prefix(b)) == [f'"{u.TXT}"']
