"""The layers hold: imports run one way, cores stay sans-I/O, modules stay small.

Layers, lowest first: ``mesh.errors`` (imports nothing of mesh), ``mesh.proto``
(sans-I/O), ``mesh.transport`` (the only code that touches aiortc/aioice),
``mesh.http`` and ``mesh.node``, then ``mesh.cli``/``mesh.api``/``mesh.pytest_plugin``.
The server (``signaling``) stands beside them and imports ``mesh.proto`` and
``mesh.errors`` only. Every import statement is read with ``ast`` (relative ones
resolved, including those inside functions), so a lazy import cannot hide.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mesh", "signaling")

ALLOWED: dict[str, set[str]] = {
    "mesh.errors": set(),
    "mesh.proto": {"mesh.errors", "mesh.proto"},
    "mesh.transport": {"mesh.errors", "mesh.proto", "mesh.transport"},
    "mesh.http": {"mesh.errors", "mesh.proto", "mesh.transport", "mesh.http"},
    # the node layer may run a server (a share serves LAN signaling itself)
    "mesh.node": {"mesh.errors", "mesh.proto", "mesh.transport", "mesh.http", "mesh.node",
                  "signaling"},
    "signaling": {"mesh.errors", "mesh.proto", "signaling"},
}
TOP = {"mesh", "mesh.cli", "mesh.api", "mesh.pytest_plugin", "mesh.__main__"}
"""The top: free to import every layer below."""

SANS_IO = {"asyncio", "aiortc", "aioice", "aiohttp", "zeroconf", "OpenSSL", "ssl",
           "selectors", "redis", "platformdirs"}
"""What no protocol core may import: event loops, network libraries, the filesystem's
user dirs. (mesh.proto.sockopt takes a socket to set options on, and does no I/O.)"""
FOREIGN = {"aiortc", "aioice"}
"""Only the transport layer touches aiortc and aioice."""

MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def layer(name: str) -> str | None:
    if name in TOP or name.startswith("mesh.cli."):
        return None
    for prefix in sorted(ALLOWED, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{name} is in no layer: add it to the map in this test")


def first_party(target: str, known: dict[str, Path]) -> str | None:
    """The layer a first-party import lands in (None: a third-party module)."""
    if target.split(".")[0] not in PACKAGES:
        return None
    while target and target not in known:
        target = target.rpartition(".")[0]
    return layer(target) or "top" if target else None


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_run_one_way(name: str) -> None:
    own = layer(name)
    if own is None:
        return
    wrong = sorted({t for t in imports(name, ALL[name])
                    if (hit := first_party(t, ALL)) is not None and hit not in ALLOWED[own]})
    assert not wrong, f"{name} ({own}) imports against the layers: {wrong}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if layer(n) == "mesh.proto"))
def test_protocol_cores_are_sans_io(name: str) -> None:
    roots = {t.split(".")[0] for t in imports(name, ALL[name])}
    assert not roots & SANS_IO, f"{name} imports {sorted(roots & SANS_IO)}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_only_the_transport_touches_aiortc(name: str) -> None:
    roots = {t.split(".")[0] for t in imports(name, ALL[name])}
    if roots & FOREIGN:
        assert layer(name) == "mesh.transport", f"{name} imports {sorted(roots & FOREIGN)}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_modules_stay_small(name: str) -> None:
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_the_package_is_a_plain_module() -> None:
    import mesh

    assert type(mesh) is types.ModuleType  # no __class__ swapping
    assert "__class__" not in (ROOT / "mesh" / "__init__.py").read_text()


def test_a_wrong_import_is_caught(tmp_path: Path) -> None:
    """The checker itself: a proto module importing the node layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from mesh.node import share\nfrom ..transport import peer\nimport asyncio\n")
    found = imports("mesh.proto.bad", bad)
    assert "mesh.node.share" in found and "mesh.transport.peer" in found
    assert {first_party(t, ALL) for t in found} >= {"mesh.node", "mesh.transport"}
