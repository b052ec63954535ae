"""mesh: a peer-to-peer reverse proxy over WebRTC data channels.

Python API::

    import mesh

    async with mesh.share(8000, signal="ws://host:8765/") as share:
        print(share.ticket)

    async with mesh.connect(ticket) as tunnel:   # or a share's name on the LAN
        ...  # the service is on 127.0.0.1:tunnel.port, over tunnel.path

See README.md; pytest fixtures are in ``mesh.pytest_plugin``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import connect, share
    from .errors import MeshError
    from .node.config import ConnectConfig, ShareConfig
    from .node.connect import Tunnel
    from .node.share import Share

# Loaded on first use, so `mesh connect` does not pay for the sharer's modules
# (aiohttp.web among them) at start-up.
_LAZY = {"share": "api", "connect": "api", "ConnectConfig": "node.config",
         "Tunnel": "node.connect", "MeshError": "errors", "Share": "node.share",
         "ShareConfig": "node.config"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["ConnectConfig", "MeshError", "Share", "ShareConfig", "Tunnel", "connect", "share"]
__version__ = "0.1.0"
