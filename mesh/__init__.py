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
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import connect, share
    from .errors import MeshError
    from .node.connect import ConnectConfig, Tunnel
    from .node.share import Share, ShareConfig

# Loaded on first use, so `mesh connect` does not pay for the sharer's modules
# (aiohttp.web among them) at start-up.
_LAZY = {"ConnectConfig": "node.connect", "Tunnel": "node.connect", "MeshError": "errors",
         "Share": "node.share", "ShareConfig": "node.share"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def _api_function(name: str) -> property:
    """``mesh.NAME`` is ``mesh.api.NAME`` even once the submodule ``mesh.NAME`` loads:
    the import system then binds the submodule on the package, and the setter keeps
    the function."""

    def get(_package: types.ModuleType) -> Any:
        return getattr(importlib.import_module(".api", __name__), name)

    def keep(_package: types.ModuleType, _submodule: Any) -> None:
        pass

    return property(get, keep)


class _Package(types.ModuleType):
    share = _api_function("share")
    connect = _api_function("connect")


sys.modules[__name__].__class__ = _Package

__all__ = ["ConnectConfig", "MeshError", "Share", "ShareConfig", "Tunnel", "connect", "share"]
__version__ = "0.1.0"
