"""The ``MESH_*`` environment variables: read here and nowhere else.

| variable | meaning |
|---|---|
| ``MESH_SIGNAL`` | default signaling URL(s), comma separated |
| ``MESH_HOME`` | where the node key, kept secrets and control sockets live |
| ``MESH_ICE_ADDRESSES`` | comma-separated local addresses ICE may gather on |
| ``MESH_LAN`` | ``off`` disables LAN advertising, LAN signaling and name lookup |
| ``MESH_PLPMTUD`` | ``off`` keeps SCTP packets at the base size |
| ``MESH_PORTMAP`` | ``off``: never ask the router for a port mapping (``--no-portmap``) |

The lower layers never look at the environment: these values reach them as
arguments (configuration fields), so a test or an embedding program sets them
the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from mesh.proto.names import check_signal_url

OFF = ("off", "0", "no", "false")


def _flag(name: str) -> bool:
    return os.environ.get(name, "on").strip().lower() not in OFF


def signal_urls(given: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """``given`` if any, else ``$MESH_SIGNAL``; each checked."""
    if isinstance(given, str):
        given = [given]
    urls = [u.strip() for u in (given or []) if u and u.strip()]
    if not urls:
        urls = [u.strip() for u in os.environ.get("MESH_SIGNAL", "").split(",") if u.strip()]
    return tuple(check_signal_url(u, "--signal" if given else "MESH_SIGNAL") for u in urls)


def lan_enabled() -> bool:
    return _flag("MESH_LAN")


def plpmtud_enabled() -> bool:
    return _flag("MESH_PLPMTUD")


def portmap_enabled() -> bool:
    return _flag("MESH_PORTMAP")


def udp_offload_enabled() -> bool:
    return _flag("MESH_UDP_OFFLOAD")


def ice_addresses() -> tuple[str, ...] | None:
    """The addresses ICE may gather host candidates on; None: all but loopback."""
    text = os.environ.get("MESH_ICE_ADDRESSES", "").strip()
    return tuple(a.strip() for a in text.split(",") if a.strip()) or None


def home() -> Path:
    """The directory holding mesh's persistent state."""
    given = os.environ.get("MESH_HOME")
    return Path(given) if given else Path(platformdirs.user_config_dir("mesh"))


def runtime() -> Path:
    """Where the control sockets of running processes live."""
    given = os.environ.get("MESH_HOME")
    if given:
        return Path(given) / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "mesh"
    return home() / "run"
