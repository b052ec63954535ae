"""A MESH_HOME, key or secret that someone else owns or can change is refused
(hardening #16): a planted key or secret would make this machine someone else's
node, or admit their tickets. Real files in a temporary directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.errors import IdentityError
from mesh.node import status
from mesh.node.home import load_or_create, share_secret
from mesh.proto.identity import Identity

OTHER_UID = 65534  # nobody


def _planted_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    key = home / "identity.key"
    key.write_text(bytes(Identity.generate().signing_key).hex() + "\n")
    key.chmod(0o600)
    home.chmod(0o700)
    return home


def test_a_fresh_home_is_created_private(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    load_or_create(home)
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o722, 0o757])
def test_a_home_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    home = _planted_home(tmp_path)
    home.chmod(mode)
    with pytest.raises(IdentityError, match="writable by others"):
        load_or_create(home)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_a_key_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    home = _planted_home(tmp_path)
    (home / "identity.key").chmod(mode)
    with pytest.raises(IdentityError, match="readable or writable by others"):
        load_or_create(home)


def test_a_symlinked_key_is_refused(tmp_path: Path) -> None:
    home = _planted_home(tmp_path)
    target = tmp_path / "elsewhere.key"
    (home / "identity.key").rename(target)
    (home / "identity.key").symlink_to(target)
    with pytest.raises(IdentityError, match="symbolic link"):
        load_or_create(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file someone else's needs root")
@pytest.mark.parametrize("which", ["home", "key"])
def test_a_home_or_key_of_another_user_is_refused(tmp_path: Path, which: str) -> None:
    home = _planted_home(tmp_path)
    os.chown(home if which == "home" else home / "identity.key", OTHER_UID, OTHER_UID)
    with pytest.raises(IdentityError, match="belongs to uid 65534"):
        load_or_create(home)


def test_share_secrets_are_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _planted_home(tmp_path)
    monkeypatch.setenv("MESH_HOME", str(home))
    share_secret("web")
    shares = home / "shares"
    assert shares.stat().st_mode & 0o777 == 0o700
    (secret,) = shares.iterdir()
    assert secret.stat().st_mode & 0o777 == 0o600
    secret.chmod(0o644)
    with pytest.raises(IdentityError, match="readable or writable by others"):
        share_secret("web")
    secret.chmod(0o600)
    shares.chmod(0o777)
    with pytest.raises(IdentityError, match="writable by others"):
        share_secret("web")


def test_status_skips_a_runtime_dir_it_does_not_control(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _planted_home(tmp_path)
    monkeypatch.setenv("MESH_HOME", str(home))
    run = home / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    server = status.ControlServer(lambda: {})
    asyncio.run(server.start())
    assert not list(run.iterdir())  # no socket in a directory others can change
    with pytest.raises(IdentityError):
        asyncio.run(status.query_all())


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    home = _planted_home(tmp_path)
    home.chmod(0o777)
    res = subprocess.run([sys.executable, "-m", "mesh", "id"], capture_output=True, text=True,
                         env={**os.environ, "MESH_HOME": str(home)}, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr  # exit 1: other errors
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "writable by others" in lines[0], lines
