"""The node's state on disk: its key file and the kept admission secrets.

``$MESH_HOME`` (default: the user config dir) holds ``identity.key`` (the
Ed25519 seed, 64 hex characters and a newline, mode 0600) and
``shares/<hash of name>.secret`` (each share name's admission secret, 0600,
so its tickets survive restarts). The key material itself is
``mesh/proto/identity.py``.

Nothing here is used unless this user owns it and no one else can change it
(``check_private``): a ``MESH_HOME`` that someone else created, or left
writable, could hold a planted key or secret. Keys and secrets must also be
unreadable to others. A refusal is one ``IdentityError`` line saying how to fix it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mesh.errors import IdentityError
from mesh.proto.identity import Identity
from mesh.proto.ticket import new_secret

from . import environ


def check_private(path: Path, *, secret: bool = False) -> None:
    """Refuse ``path`` unless this user owns it and others cannot write it (``secret``:
    nor read it). Missing paths pass (they are created private)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise IdentityError(f"cannot check {path}: {exc.strerror or exc}") from exc
    kind = "directory" if path.is_dir() else "file"
    if st.st_uid != os.geteuid():
        raise IdentityError(f"refusing {kind} {path}: it belongs to uid {st.st_uid}, not to "
                            f"you (uid {os.geteuid()}); use a MESH_HOME of your own")
    if os.path.islink(path):
        raise IdentityError(f"refusing {path}: it is a symbolic link")
    loose = st.st_mode & (0o077 if secret else 0o022)
    if loose:
        what = "readable or writable by others" if secret else "writable by others"
        fix = "600" if secret else "700"
        raise IdentityError(f"refusing {kind} {path}: it is {what} (mode "
                            f"{st.st_mode & 0o777:o}); chmod {fix} it")


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user controls (created 0700 if missing)."""
    check_private(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror or exc}") from exc
    check_private(path)
    return path


def mesh_home() -> Path:
    """The directory holding mesh's persistent state (``MESH_HOME``)."""
    return environ.home()


def load_or_create(home: Path | None = None) -> Identity:
    """The node's persistent identity, created with mode 0600 on first use."""
    home = home or mesh_home()
    path = home / "identity.key"
    private_dir(home)
    check_private(path, secret=True)
    try:
        if path.exists():
            text = path.read_text().strip()
            try:
                seed = bytes.fromhex(text)
            except ValueError:
                seed = b""
            if len(seed) != 32:
                raise IdentityError(f"{path} is not a mesh identity key (64 hex characters)")
            return Identity.from_seed(seed)
        ident = Identity.generate()
        tmp = path.with_name(f".identity.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(bytes(ident.signing_key).hex() + "\n")
        try:
            os.link(tmp, path)  # atomic and exclusive: two first runs agree on one key
        except FileExistsError:
            return load_or_create(home)
        finally:
            os.unlink(tmp)
        return ident
    except OSError as exc:
        raise IdentityError(f"cannot use identity at {path}: {exc.strerror or exc}") from exc


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable by this user only (0600) from the first
    byte: written to a private temporary file, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def share_secret(name: str, rotate: bool = False) -> bytes:
    """The admission secret of the share called ``name``, kept (0600) across restarts so
    its tickets keep working; ``rotate`` replaces it, revoking every older ticket."""
    directory = mesh_home() / "shares"
    path = directory / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".secret")
    private_dir(mesh_home())
    private_dir(directory)
    check_private(path, secret=True)
    try:
        if not rotate and path.exists():
            secret = bytes.fromhex(path.read_text().strip())
            if 16 <= len(secret) <= 32:
                return secret
        secret = new_secret()
        write_private(path, (secret.hex() + "\n").encode())
        return secret
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot keep the share secret in {directory}: {exc}") from exc
