"""`mesh connect` starts without loading the sharer's modules (start-up time is a target)."""

from __future__ import annotations

import subprocess
import sys


def test_connect_path_does_not_import_the_sharer_or_the_turn_server() -> None:
    code = ("import sys, mesh.cli, mesh.node.connect\n"
            "print(sorted(m for m in ('aiohttp.web', 'mesh.node.share', 'mesh.http.inspector',"
            " 'signaling.turn_server', 'signaling.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]", out


def test_package_api_names_survive_their_submodules_loading() -> None:
    code = ("import mesh, mesh.node.share, mesh.node.connect, mesh.api\n"
            "assert mesh.share is mesh.api.share and mesh.connect is mesh.api.connect\n"
            "from mesh import Share, ConnectConfig, MeshError\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
