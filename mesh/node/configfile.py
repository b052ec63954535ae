"""``mesh.toml``: every tunnel of one machine in one file, for ``mesh up``.

Format (TOML, read with ``tomllib``)::

    signal = "wss://signal.example.com/"      # default for every entry (or a list)

    [share.web]                               # the entry's name: events carry it
    target = 8000                             # PORT or "HOST:PORT"
    http = true                               # or a table: {basic_auth, host_header, inspect}
    public = true

    [share.dns]
    target = "127.0.0.1:5300"
    udp = true

    [connect.db]
    ticket = "mesh1..."                       # or the name of a share on the LAN
    port = 5432

Every field is the long flag of ``mesh share`` / ``mesh connect`` with ``_`` for
``-`` (``max_flows``, ``resume_timeout``, ...), and every value is checked by
the same configuration classes the command line and the API build
(config.py), so the file accepts and refuses what they do. A problem is one
``ConfigError`` naming the file, the line and the field. Entry names are DNS
labels, unique across both tables. Sans-I/O apart from reading the file.
"""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError, MeshError, TicketError
from mesh.http.config import HttpConfig
from mesh.proto import names
from mesh.proto import ticket as ticket_mod

from . import environ
from .config import ConnectConfig, ShareConfig, ice_from_env

FILE = "mesh.toml"

SHARE_FIELDS = {"target", "signal", "name", "allow", "ttl", "max_peers", "max_streams",
                "idle_timeout", "new_ticket", "lan", "lan_open", "http", "public",
                "public_auth", "udp", "tcp", "udp_idle", "max_flows", "resume_timeout",
                "no_portmap"}
CONNECT_FIELDS = {"ticket", "port", "bind", "signal", "max_streams", "idle_timeout",
                  "retry_direct", "http", "no_http_guard", "relay_only", "udp_idle",
                  "max_flows", "resume_timeout", "no_portmap"}
HTTP_FIELDS = {"basic_auth", "host_header", "inspect"}
TOP_FIELDS = {"signal", "share", "connect"}


@dataclass(frozen=True)
class ConnectEntry:
    """A connect: ``target`` is a ticket or a LAN name (resolved when it starts)."""

    target: str
    config: ConnectConfig
    """Checked configuration; for a LAN name, its ticket is a placeholder until then."""

    @property
    def lan_name(self) -> bool:
        """``target`` names a share on the LAN: its ticket comes when it is found."""
        return self.config.ticket is PLACEHOLDER


Entry = ShareConfig | ConnectEntry


@dataclass(frozen=True)
class Plan:
    path: Path
    entries: dict[str, Entry]

    def describe(self) -> str:
        kinds = [f"{'share' if isinstance(e, ShareConfig) else 'connect'} {n}"
                 for n, e in self.entries.items()]
        return f"{self.path}: {len(kinds)} tunnel{'s' * (len(kinds) != 1)} ({', '.join(kinds)})"


def find(given: str | None) -> Path:
    """The file ``mesh up`` reads: ``given``, else ./mesh.toml, else the config dir's."""
    if given:
        return Path(given)
    for candidate in (Path.cwd() / FILE, environ.home() / FILE):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {FILE} here or in {environ.home()}; pass the file to read")


def load(path: Path) -> Plan:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}"
                          ) from exc
    return parse(text, str(path), path)


def parse(text: str, where: str, path: Path | None = None) -> Plan:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        text_only = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "",
                           str(exc))
        at = f"{where}:{found.group(1)}" if found else where
        raise ConfigError(f"{at}: {text_only}") from exc
    lines = Lines(text, where)
    for key in doc:
        if key not in TOP_FIELDS:
            raise lines.error(None, key, f"unknown setting {key!r} (signal, [share.NAME], "
                                         "[connect.NAME])")
    default_signal = _signal(doc.get("signal"), lines, None)
    entries: dict[str, Entry] = {}
    for kind in ("share", "connect"):
        tables = doc.get(kind, {})
        if not isinstance(tables, dict):
            raise lines.error(None, kind, f"[{kind}.NAME] tables are expected")
        for name, fields in tables.items():
            table = f"{kind}.{name}"
            if not isinstance(fields, dict):
                raise lines.error(None, f"{kind}.{name}", f"[{table}] must be a table")
            try:
                names.check_name(name, "a tunnel name")
            except ConfigError as exc:
                raise lines.error(table, None, str(exc)) from None
            if name in entries:
                raise lines.error(table, None, f"the name {name!r} is used twice")
            build = _share if kind == "share" else _connect
            entries[name] = build(fields, default_signal, lines, table)
    if not entries:
        raise ConfigError(f"{where}: no [share.NAME] or [connect.NAME] entry")
    return Plan(path or Path(where), entries)


class Lines:
    """Where a table or a field is in the file, for error messages (tomllib keeps no
    positions: the text is searched, the table's own section first)."""

    def __init__(self, text: str, where: str) -> None:
        self.lines = text.splitlines()
        self.where = where

    def _header(self, table: str) -> int | None:
        kind, _, name = table.partition(".")
        pattern = re.compile(rf"^\s*\[\s*{re.escape(kind)}\s*\.\s*\"?{re.escape(name)}\"?\s*\]")
        for i, line in enumerate(self.lines):
            if pattern.match(line):
                return i
        return None

    def line_of(self, table: str | None, field: str | None) -> int | None:
        start = self._header(table) if table else 0
        if start is None:
            return None
        if field is None:
            return start + 1
        key = re.compile(rf"^\s*\"?{re.escape(field)}\"?\s*=")
        for i in range(start + (1 if table else 0), len(self.lines)):
            line = self.lines[i]
            if table and line.lstrip().startswith("["):
                break
            if key.match(line):
                return i + 1
        return start + 1 if table else None

    def error(self, table: str | None, field: str | None, message: str) -> ConfigError:
        line = self.line_of(table, field)
        at = f"{self.where}:{line}" if line else self.where
        scope = f"[{table}] " if table else ""
        what = f"{field}: " if field else ""
        return ConfigError(f"{at}: {scope}{what}{message}")


def _take(fields: dict[str, Any], allowed: set[str], lines: Lines, table: str,
          within: str | None = None) -> None:
    """Refuse unknown keys (``within``: the key of the inline table they are in)."""
    for key in fields:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            if within is None:
                raise lines.error(table, key, f"unknown field (one of: {known})")
            raise lines.error(table, within, f"unknown field {key!r} (one of: {known})")


def _typed(fields: dict[str, Any], lines: Lines, table: str, key: str, kind: type | tuple[
        type, ...], what: str) -> Any:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise lines.error(table, key, f"must be {what}, not {value!r}")
    if not isinstance(value, kind):
        raise lines.error(table, key, f"must be {what}, not {value!r}")
    return value


def _signal(value: Any, lines: Lines, table: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise lines.error(table, "signal", "must be a URL or a list of URLs")
    try:
        return environ.signal_urls(urls)
    except ConfigError as exc:
        raise lines.error(table, "signal", str(exc)) from None


def _options(fields: dict[str, Any], lines: Lines, table: str, spec: dict[str, tuple[
        type | tuple[type, ...], str]]) -> dict[str, Any]:
    out = {}
    for key, (kind, what) in spec.items():
        value = _typed(fields, lines, table, key, kind, what)
        if value is not None:
            out[key] = value
    return out


NUMBER = ((int, float), "a number")
WHOLE = (int, "a whole number")
FLAG = (bool, "true or false")
TEXT = (str, "a string")


def _http(value: Any, lines: Lines, table: str) -> HttpConfig | None:
    if value is None or value is False:
        return None
    if value is True:
        return HttpConfig()
    if not isinstance(value, dict):
        raise lines.error(table, "http", "must be true, false or a table")
    _take(value, HTTP_FIELDS, lines, table, within="http")
    opts = _options(value, lines, table, {"basic_auth": TEXT, "host_header": TEXT,
                                          "inspect": ((str, bool), "an address or false")})
    inspect = opts.pop("inspect", None)
    try:
        return HttpConfig.from_flags(basic_auth=opts.get("basic_auth"),
                                     host_header=opts.get("host_header"),
                                     inspect=inspect if isinstance(inspect, str) else None,
                                     no_inspect=inspect is False)
    except ConfigError as exc:
        raise lines.error(table, "http", str(exc)) from None


def _share(fields: dict[str, Any], default_signal: tuple[str, ...], lines: Lines,
           table: str) -> ShareConfig:
    _take(fields, SHARE_FIELDS, lines, table)
    target = fields.get("target")
    if target is None:
        raise lines.error(table, None, "target = PORT or \"HOST:PORT\" is missing")
    if isinstance(target, bool) or not isinstance(target, int | str):
        raise lines.error(table, "target", "must be PORT or \"HOST:PORT\"")
    opts = _options(fields, lines, table, {
        "name": TEXT, "ttl": NUMBER, "max_peers": WHOLE, "max_streams": WHOLE,
        "idle_timeout": NUMBER, "new_ticket": FLAG, "lan": FLAG, "lan_open": FLAG,
        "public": FLAG, "udp": FLAG, "tcp": FLAG, "udp_idle": NUMBER, "max_flows": WHOLE,
        "resume_timeout": NUMBER})
    _portmap(fields, opts, lines, table)
    allow = fields.get("allow")
    if allow is not None:
        if not isinstance(allow, list) or not all(isinstance(k, str) for k in allow):
            raise lines.error(table, "allow", "must be a list of node ids")
        opts["allow"] = frozenset(allow)
    auth = _typed(fields, lines, table, "public_auth", str, "USER:PASS")
    http = _http(fields.get("http"), lines, table)
    signal = _signal(fields.get("signal"), lines, table) or default_signal
    try:
        host, port = names.parse_hostport(str(target), "target", default_host="127.0.0.1")
        if auth is not None:
            opts["public_auth"] = names.check_basic_auth(auth, "public_auth")
        opts.setdefault("lan", environ.lan_enabled())
        return ShareConfig(port=port, host=host, signal_urls=signal, http=http, **opts)
    except ConfigError as exc:
        raise lines.error(table, _field_named(str(exc), fields), str(exc)) from None


def _connect(fields: dict[str, Any], default_signal: tuple[str, ...], lines: Lines,
             table: str) -> ConnectEntry:
    _take(fields, CONNECT_FIELDS, lines, table)
    target = _typed(fields, lines, table, "ticket", str, "a ticket or a share's name")
    if not target:
        raise lines.error(table, None, "ticket = \"mesh1...\" (or a share's LAN name) is "
                                       "missing")
    opts = _options(fields, lines, table, {
        "port": WHOLE, "max_streams": WHOLE, "idle_timeout": NUMBER, "http": FLAG,
        "no_http_guard": FLAG, "relay_only": FLAG, "udp_idle": NUMBER, "max_flows": WHOLE,
        "resume_timeout": NUMBER})
    _portmap(fields, opts, lines, table)
    if "retry_direct" in fields:
        opts["upgrade_interval"] = _typed(fields, lines, table, "retry_direct", (int, float),
                                          "a number")
    bind = _typed(fields, lines, table, "bind", str, "an address")
    if bind is not None:
        opts["host"] = bind
    signal = _signal(fields.get("signal"), lines, table)
    try:
        if ticket_mod.looks_like_ticket(target) or target.startswith(ticket_mod.PREFIX):
            ticket = ticket_mod.decode(target, now=time.time())
        else:
            names.check_name(target, "ticket (a share's name)")
            ticket = PLACEHOLDER
        return ConnectEntry(target, ConnectConfig(ticket=ticket, signal_urls=signal, **opts))
    except MeshError as exc:
        field = "ticket" if isinstance(exc, TicketError) else _field_named(
            str(exc), fields)
        raise lines.error(table, field, str(exc)) from None


def _portmap(fields: dict[str, Any], opts: dict[str, Any], lines: Lines, table: str) -> None:
    """``no_portmap = true``: this tunnel never asks the router for a mapping."""
    if _typed(fields, lines, table, "no_portmap", bool, "true or false"):
        opts["ice"] = replace(ice_from_env(), portmap=False)


PLACEHOLDER = ticket_mod.Ticket(node_id="a" * 52, secret=b"\0" * 16, expires=2**32 - 1)
"""Stands in for the ticket of a LAN name while the options are checked."""


def _field_named(message: str, fields: dict[str, Any]) -> str | None:
    """The field a configuration error is about, when it names one (``--max-flows`` is
    ``max_flows``)."""
    for flag in re.findall(r"--([a-z0-9-]+)", message):
        key = str(flag).replace("-", "_")
        if key in fields:
            return key
    for key in fields:
        if key in message:
            return key
    return None
