"""mesh: a peer-to-peer reverse proxy over WebRTC data channels.

Python API::

    import mesh

    async with mesh.share(8000, signal="ws://host:8765/") as share:
        print(share.ticket)

    async with mesh.connect(ticket) as tunnel:   # or a share's name on the LAN
        ...  # the service is on 127.0.0.1:tunnel.port, over tunnel.path

See README.md; pytest fixtures are in ``mesh.pytest_plugin``.
"""

from .api import connect, share
from .connect import ConnectConfig, Tunnel
from .errors import MeshError
from .share import Share, ShareConfig

__all__ = ["ConnectConfig", "MeshError", "Share", "ShareConfig", "Tunnel", "connect", "share"]
__version__ = "0.1.0"
