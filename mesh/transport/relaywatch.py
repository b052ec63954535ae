"""Peer addresses the TURN relay refused, said in words a user can act on.

Before aioice relays to a peer it binds a channel; a relay whose policy refuses
the address answers 403, and aioice's send fails inside a task nobody awaits
(an asyncio traceback at exit, and the attempt waits out its timeout).
``RelayWatch`` wraps the channel bind of each relayed candidate's TURN client
(per instance, through _private.py; no process-wide patch), notes the refused
addresses, swallows the refusal (nothing can be sent to them anyway), and calls
``on_all_refused`` with one readable line once every remote address of the
attempt has been refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from aioice.stun import TransactionFailed

from . import _private

Address = tuple[str, int]


class RelayWatch:
    def __init__(self, on_all_refused: Callable[[str], None]) -> None:
        self._on_all_refused = on_all_refused
        self._remote: set[Address] = set()
        self.refused: set[Address] = set()
        self._told = False

    def watch(self, connection: Any) -> None:
        """Wrap the channel bind of every TURN client of ``connection``."""
        for client in _private.turn_clients(connection):
            original = client.channel_bind

            async def bind(channel: int, addr: Address, original: Any = original) -> None:
                try:
                    await original(channel, addr)
                except TransactionFailed as exc:
                    code = exc.response.attributes.get("ERROR-CODE", (0, ""))[0]
                    if code != 403:
                        raise
                    self._refused((str(addr[0]), int(addr[1])))

            client.channel_bind = bind

    def expect(self, remote: Iterable[Address]) -> None:
        """The peer addresses this attempt may reach through the relay."""
        self._remote = set(remote)
        self._check()

    def _refused(self, addr: Address) -> None:
        self.refused.add(addr)
        self._check()

    def _check(self) -> None:
        if self._told or not self._remote or not self._remote <= self.refused:
            return
        self._told = True
        self._on_all_refused(explain(sorted({host for host, _ in self.refused})))


def explain(hosts: list[str]) -> str:
    """"the relay refused 127.0.0.1 (loopback); ..." with the flag that would open it."""
    kinds = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            kinds.append(host)
            continue
        kind = ("loopback" if ip.is_loopback else "a private address" if ip.is_private
                else "refused by the relay's policy")
        kinds.append(f"{host} ({kind})")
    hint = ("for a test on one machine start `mesh signal --relay-allow 127.0.0.0/8`"
            if all(ipaddress.ip_address(h).is_loopback for h in hosts if _is_ip(h))
            else "on a private network start `mesh signal --relay-allow CIDR` for its range")
    return f"the relay refused {', '.join(kinds)}; {hint}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
