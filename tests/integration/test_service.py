"""`mesh service`: the systemd unit it writes, checked by `systemd-analyze verify` where
that exists, installed and removed as a user unit (systemd does not run in CI: the
unit is written, not started)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Mesh


def test_the_unit_restarts_confines_and_keeps_the_key(mesh: Mesh, tmp_path: Path) -> None:
    res = mesh.run("service", "show", "up", str(tmp_path / "mesh.toml"), home="svc")
    assert res.returncode == 0, res.stderr
    unit = res.stdout
    lines = unit.splitlines()
    (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.endswith(f" up {tmp_path / 'mesh.toml'}")
    for wanted in ("Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                   f'Environment="MESH_HOME={mesh.tmp / "svc"}"',
                   f"ReadWritePaths={mesh.tmp / 'svc'}", "CapabilityBoundingSet=",
                   "WantedBy=multi-user.target"):
        assert wanted in lines, (wanted, unit)
    gateway = mesh.run("service", "show", "serve", "--domain", "d.example", home="svc").stdout
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in gateway.splitlines()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was checked by reading it")
    (mesh.tmp / "svc").mkdir(exist_ok=True)
    for name, text in (("mesh-up.service", unit), ("mesh-serve.service", gateway)):
        path = tmp_path / name
        path.write_text(text)
        check = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_install_status_uninstall_as_a_user_unit(mesh: Mesh, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    res = mesh.run("service", "install", "signal", "--port", "8765", "--user", "--json",
                   home="svc", **env)
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    path = tmp_path / "config" / "systemd" / "user" / "mesh-signal.service"
    assert done["path"] == str(path) and path.is_file()
    assert "ExecStart=" in path.read_text() and "signal --port 8765" in path.read_text()
    assert "WantedBy=default.target" in path.read_text()
    assert (mesh.tmp / "svc" / "identity.key").exists()  # made at install: `mesh id` works
    state = json.loads(mesh.run("service", "status", "signal", "--user", "--json", home="svc",
                                **env).stdout)
    assert state["installed"] is True
    res = mesh.run("service", "uninstall", "signal", "--user", home="svc", **env)
    assert res.returncode == 0 and not path.exists(), res
    bad = mesh.run("service", "install", "frobnicate", home="svc", **env)
    assert bad.returncode == 2
