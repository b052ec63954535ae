"""What the transport takes from the environment (read by mesh/node/environ.py), as one
frozen value the configurations carry; importing it loads nothing else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IceSettings:
    """What the transport takes from the environment (mesh/node/environ.py)."""

    host_addresses: tuple[str, ...] | None = None
    """Local addresses to gather host candidates on; None: aioice's choice (all
    but loopback)."""
    plpmtud: bool = True
    """Path MTU discovery (RFC 8899) with peers that announce it."""
    udp_offload: bool = True
    """Linux UDP segmentation offload on the selected pair's socket (wire.py)."""
    portmap: bool = True
    """Ask the router for a port mapping (PCP, NAT-PMP) and offer it as a candidate."""
