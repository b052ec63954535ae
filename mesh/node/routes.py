"""``mesh gateway --routes FILE``: host and path rules that map requests to names.

The file is TOML, one ``[[route]]`` table per rule, checked in order (the first
match wins); a request no rule matches is routed as usual (``NAME.DOMAIN``,
``/s/NAME/``)::

    [[route]]
    host = "shop.example.com"   # optional: exact, or "*.example.com"
    path = "/api/"              # optional: a path prefix
    name = "api"                # the public name (pool) that serves it
    strip = true                # remove the prefix before forwarding
    # optional response policy for this route (default: the gateway's flags)
    compress = true
    security_headers = true
    headers = { "X-Robots-Tag" = "noindex" }
    cors = ["https://app.example.com"]
    cache = false               # keep this route out of --cache-size

    [[route]]
    name = "web"                # no host, no path: everything else

A bad file is refused at start: one ``ConfigError`` naming the file, the line
and the reason (tomllib keeps no positions, so the rule's table is searched for
the key). Sans-I/O: ``parse`` takes the text, ``match`` is a pure function.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError
from mesh.http.edge import EdgePolicy
from mesh.http.policy import FRAMING, HOP_BY_HOP
from mesh.proto.names import valid_domain, valid_name

KEYS = {"host", "path", "name", "strip", "compress", "security_headers", "headers", "cors",
        "cache"}
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
NOT_ADDABLE = {k.decode() for k in HOP_BY_HOP | FRAMING} | {"host"}
"""Headers a route or ``--header`` may not add: the hop's own and the framing."""


@dataclass(frozen=True)
class Rule:
    name: str
    host: str | None = None
    path: str | None = None
    strip: bool = False
    policy: EdgePolicy | None = None
    """This route's response policy; None: the gateway's."""
    cache: bool = True
    line: int = 0


def match(rules: tuple[Rule, ...], host: bytes | None,
          target: bytes) -> tuple[Rule, bytes] | None:
    """The first rule for a request and the target to forward, or None."""
    hostname = (host or b"").decode("latin-1").lower()
    if not hostname.startswith("["):
        hostname = hostname.rsplit(":", 1)[0]
    path = target.decode("latin-1")
    for rule in rules:
        if rule.host is not None and not _host_matches(rule.host, hostname):
            continue
        if rule.path is not None and not _under(path, rule.path):
            continue
        if rule.path is not None and rule.strip:
            rest = path[len(rule.path.rstrip("/")):]
            rest = rest if rest.startswith("/") else "/" + rest
            return rule, rest.encode("latin-1")
        return rule, target
    return None


def _host_matches(pattern: str, hostname: str) -> bool:
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:]) and len(hostname) > len(pattern) - 1
    return hostname == pattern


def _under(path: str, prefix: str) -> bool:
    """``/api/`` matches /api, /api/ and /api/x, not /apix; query strings count as the end."""
    if path.startswith(prefix):
        return True
    bare = prefix.rstrip("/")
    return path == bare or path.startswith(bare + "?") or path.startswith(bare + "/")


def load(path: str) -> tuple[Rule, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--routes {path}: cannot read it: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse(text, path)


def parse(text: str, where: str) -> tuple[Rule, ...]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        at = f"{where}:{found.group(1)}" if found else where
        raise ConfigError(f"{at}: not valid TOML: {reason}") from None
    lines = text.splitlines()
    extra = set(doc) - {"route"}
    if extra:
        raise ConfigError(f"{where}: unknown setting {sorted(extra)[0]!r} (only [[route]] "
                          "tables)")
    routes = doc.get("route", [])
    if not isinstance(routes, list) or not routes:
        raise ConfigError(f"{where}: no [[route]] tables")
    return tuple(_rule(fields, i, lines, where) for i, fields in enumerate(routes))


def _line(lines: list[str], index: int, key: str | None) -> int:
    """The line of the ``index``-th [[route]] (or of ``key`` in it), 1-based; 0 if unknown."""
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*route\s*\]\]", line)]
    if index >= len(headers):
        return 0
    start = headers[index]
    if key is not None:
        pattern = re.compile(rf"\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if pattern.match(lines[i]):
                return i + 1
    return start + 1


def _rule(fields: Any, index: int, lines: list[str], where: str) -> Rule:
    def fail(key: str | None, message: str) -> ConfigError:
        line = _line(lines, index, key)
        return ConfigError(f"{where}:{line}: {message}" if line else f"{where}: {message}")

    if not isinstance(fields, dict):
        raise fail(None, "each route must be a table")
    for key in fields:
        if key not in KEYS:
            raise fail(key, f"unknown field {key!r} (one of: {', '.join(sorted(KEYS))})")
    name = fields.get("name")
    if not valid_name(name):
        raise fail("name" if "name" in fields else None,
                   "name must be the public name of a share (one lower-case DNS label)")
    host = fields.get("host")
    if host is not None and not (isinstance(host, str) and valid_domain(
            host[2:] if host.startswith("*.") else host)):
        raise fail("host", f"host {host!r} must be a host name or *.DOMAIN")
    path = fields.get("path")
    if path is not None and not (isinstance(path, str) and path.startswith("/")
                                 and path.isascii() and " " not in path and "?" not in path):
        raise fail("path", f"path {path!r} must be a prefix starting with /")
    for key in ("strip", "compress", "security_headers", "cache"):
        if key in fields and not isinstance(fields[key], bool):
            raise fail(key, f"{key} must be true or false")
    if fields.get("strip") and path is None:
        raise fail("strip", "strip needs a path")
    headers = _headers(fields.get("headers", {}), fail)
    cors = fields.get("cors", [])
    if not isinstance(cors, list) or not all(isinstance(o, str) and _origin(o) for o in cors):
        raise fail("cors", "cors must be a list of origins (https://host[:port]) or \"*\"")
    policy = None
    if {"compress", "security_headers", "headers", "cors"} & set(fields):
        policy = EdgePolicy(bool(fields.get("compress")), bool(fields.get("security_headers")),
                            headers, tuple(cors))
    return Rule(str(name), host.lower() if isinstance(host, str) else None, path,
                bool(fields.get("strip")), policy, fields.get("cache", True),
                _line(lines, index, None))


def _headers(value: Any, fail: Any) -> tuple[tuple[bytes, bytes], ...]:
    if not isinstance(value, dict):
        raise fail("headers", "headers must be a table of NAME = \"value\"")
    out = []
    for k, v in value.items():
        if not _addable(k, v):
            raise fail("headers", f"header {k!r} = {v!r} is not a header one may add")
        out.append((k.lower().encode(), v.encode()))
    return tuple(out)


def _addable(name: str, value: object) -> bool:
    """A header name and value a route or ``--header`` may add to answers."""
    return (HEADER_NAME.fullmatch(name) is not None and name.lower() not in NOT_ADDABLE
            and isinstance(value, str) and value.isascii()
            and not any(c in value for c in "\r\n\0"))


def check_header(text: str) -> tuple[bytes, bytes]:
    """``--header 'NAME: value'`` from the command line."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not value or not _addable(name, value):
        raise ConfigError(f"--header {text!r} must be 'NAME: value' (not a framing header)")
    return name.lower().encode(), value.encode()


def _origin(text: str) -> bool:
    return text == "*" or re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", text) is not None


def check_origin(text: str) -> str:
    if not _origin(text):
        raise ConfigError(f"--cors {text!r} must be an origin (https://host[:port]) or '*'")
    return text

