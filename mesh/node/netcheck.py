"""`mesh netcheck`: what this network lets a peer do.

Measures, against the signaling server and the STUN/TURN server it hands out:
the public address and port (STUN Binding), whether the NAT maps
endpoint-independently (the same local socket asks the server's two ports,
``port`` and ``port + 1``; equal mapped addresses mean a cone NAT, different
ones a symmetric NAT), UDP reachability, TURN reachability over UDP and TCP
(a real Allocate with the handed-out credentials, then released), and the
round trip to the signaling server and to STUN; and, unless turned off, what the
router offers for port mapping (PCP, NAT-PMP, UPnP-IGD: each asked for a mapping of a
throwaway port, released again; transport/portmap.py), concurrently with the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any

from mesh.proto import stun
from mesh.proto.identity import Identity
from mesh.transport import portmap
from mesh.transport.ice import ice_plan
from mesh.transport.stunclient import StunClient

from .events import NetcheckEvent
from .signal_client import SignalClient

NetReport = NetcheckEvent
"""What ``netcheck`` measures: the ``netcheck`` event is the report."""


class _TurnProbe:
    """Allocate then release, over one transport; True if the server granted it."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password

    def request(self, attrs: tuple[tuple[int, bytes], ...], method: int, nonce: bytes | None,
                realm: bytes | None) -> tuple[bytes, bytes]:
        txid = secrets.token_bytes(12)
        msg = stun.Message(method, stun.REQUEST, txid, attrs)
        key = None
        if nonce is not None and realm is not None:
            msg = msg.with_attrs((stun.USERNAME, self.user.encode()), (stun.REALM, realm),
                                 (stun.NONCE, nonce))
            key = stun.long_term_key(self.user, realm.decode(), self.password)
        return msg.encode(key=key, fingerprint=True), txid

    async def run(self, send: Any) -> bool:
        transport = ((stun.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"),)
        raw, txid = self.request(transport, stun.ALLOCATE, None, None)
        first = await send(raw, txid)
        if first is None or first.cls != stun.ERROR:
            return False
        nonce, realm = first.get(stun.NONCE), first.get(stun.REALM)
        if nonce is None or realm is None:
            return False
        raw, txid = self.request(transport, stun.ALLOCATE, nonce, realm)
        ok = await send(raw, txid)
        if ok is None or ok.cls != stun.SUCCESS:
            return False
        raw, txid = self.request(((stun.LIFETIME, stun.u32(0)),), stun.REFRESH, nonce, realm)
        await send(raw, txid)
        return True


async def _turn_tcp(probe: _TurnProbe, addr: tuple[str, int]) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), 3)
    except (TimeoutError, OSError):
        return False
    framer = stun.StreamFramer()

    async def send(raw: bytes, txid: bytes) -> stun.Message | None:
        writer.write(raw)
        try:
            async with asyncio.timeout(3):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        return None
                    for frame in framer.feed(data):
                        msg = stun.parse(frame)
                        if msg.txid == txid:
                            return msg
        except (TimeoutError, stun.StunError, OSError):
            return None

    try:
        return await probe.run(send)
    finally:
        writer.close()


async def netcheck(identity: Identity, urls: list[str], router: bool = True) -> NetcheckEvent:
    """Run every check; raises SignalingError only if no signaling server answers.
    ``router``: also ask the router what port mapping it offers."""
    asked = asyncio.create_task(_router()) if router else None
    try:
        report = await _checks(identity, urls)
    except BaseException:
        if asked is not None:
            asked.cancel()
        raise
    if asked is not None:
        report = dataclasses.replace(report, portmap=await asked)
    return report


async def _router() -> dict[str, Any]:
    gw = portmap.gateway()
    found = await portmap.probe(gw) if gw is not None else None
    if found is None:
        return {"gateway": gw, "pcp": False, "nat_pmp": False, "upnp": False,
                "mapped": None, "protocol": None}
    return found.as_dict()


async def _checks(identity: Identity, urls: list[str]) -> NetcheckEvent:
    client = SignalClient(identity, urls, lambda sender, payload: None)
    await client.start()
    try:
        rtt = await client.ping()
        servers = client.ice_servers
        url = client.url
        relay = client.relay_policy
    finally:
        await client.close()
    plan = ice_plan(servers)
    stun_addr = plan.stun_addr
    turn = {server.transport: ((server.host, server.port), server.username or "",
                               server.password or "")
            for server in (plan.turn_udp, plan.turn_tcp) if server is not None}
    report: dict[str, Any] = {"signal_url": url, "signal_rtt_ms": rtt, "notes": [],
                              "relay_policy": relay}
    if stun_addr is None:
        report["notes"].append("the signaling server hands out no STUN server")
        return _report(report)
    report["stun_server"] = f"{stun_addr[0]}:{stun_addr[1]}"
    udp = await StunClient.open()
    try:
        first, stun_rtt = await udp.binding(stun_addr)
        report["udp"] = first is not None
        if first is not None:
            report["public_addr"] = f"{first[0]}:{first[1]}"
            report["stun_rtt_ms"] = round(stun_rtt, 2)
            second, _ = await udp.binding((stun_addr[0], stun_addr[1] + 1))
            if second is None:
                report["notes"].append("the STUN server answers on one port only; "
                                       "NAT mapping not determined")
            else:
                report["mapping"] = ("endpoint-independent" if second == first
                                     else "endpoint-dependent")
        else:
            report["notes"].append("no STUN answer over UDP: UDP is blocked; "
                                   "peers will relay over TCP")
        if "udp" in turn and first is not None:
            addr, user, password = turn["udp"]

            async def send_udp(raw: bytes, txid: bytes) -> stun.Message | None:
                return await udp.ask(raw, txid, addr)

            report["turn_udp"] = (await _TurnProbe(user, password).run(send_udp)
                                  or await _TurnProbe(user, password).run(send_udp))
        elif "udp" in turn:
            report["turn_udp"] = False
    finally:
        udp.close()
    if "tcp" in turn:
        addr, user, password = turn["tcp"]
        # one retry: a single lost exchange on a busy link is not "TURN over TCP fails"
        report["turn_tcp"] = (await _turn_tcp(_TurnProbe(user, password), addr)
                              or await _turn_tcp(_TurnProbe(user, password), addr))
    if not turn:
        report["notes"].append("the signaling server hands out no TURN relay")
    return _report(report)


def _report(fields: dict[str, Any]) -> NetcheckEvent:
    defaults: dict[str, Any] = {"stun_server": None, "udp": False, "public_addr": None,
                                "mapping": "unknown", "stun_rtt_ms": None, "turn_udp": None,
                                "turn_tcp": None, "relay_policy": None}
    return NetcheckEvent(**{**defaults, **fields})

