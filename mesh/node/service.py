"""``mesh service``: a systemd unit for ``mesh up|signal|gateway|serve``.

``unit()`` builds the text (pure: everything it depends on is an argument);
``install``/``uninstall``/``state`` write or remove it under the user's or the
system's unit directory and, where systemd runs, reload and enable it. The
unit restarts on failure, keeps the key where the installing shell kept it
(``MESH_HOME``), and confines the process: no new privileges, a read-only
system, private /tmp, no kernel tunables or modules, and only the one writable
directory mesh needs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError

from . import environ

COMMANDS = ("up", "signal", "gateway", "serve")
HARDENING = ("NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict",
             "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
             "ProtectControlGroups=yes", "RestrictSUIDSGID=yes", "RestrictRealtime=yes",
             "LockPersonality=yes", "RestrictNamespaces=yes", "SystemCallArchitectures=native",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK")


@dataclass(frozen=True)
class Service:
    command: str
    args: tuple[str, ...]
    user: bool
    executable: str
    home: Path
    """MESH_HOME of the unit: the installing shell's, so the same key is used."""
    workdir: Path
    signal: str | None = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ConfigError(f"mesh service runs one of {', '.join(COMMANDS)}, not "
                              f"{self.command!r}")

    @property
    def name(self) -> str:
        return f"mesh-{self.command}.service"

    @property
    def path(self) -> Path:
        if self.user:
            base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            return base / "systemd" / "user" / self.name
        return Path("/etc/systemd/system") / self.name


def unit(service: Service) -> str:
    exec_start = shlex.join([service.executable, service.command, *service.args])
    env = [f"MESH_HOME={service.home}"]
    if service.signal:
        env.append(f"MESH_SIGNAL={service.signal}")
    lines = ["[Unit]", f"Description=mesh {service.command} (peer-to-peer tunnels)",
             "Wants=network-online.target", "After=network-online.target", "",
             "[Service]", "Type=simple", f"ExecStart={exec_start}",
             *(f'Environment="{e}"' for e in env), f"WorkingDirectory={service.workdir}",
             "Restart=on-failure", "RestartSec=2s", "TimeoutStopSec=15s", "KillSignal=SIGTERM"]
    if service.command == "up":
        lines.append("ExecReload=/bin/kill -HUP $MAINPID")
    lines += HARDENING
    lines.append(f"ReadWritePaths={service.home}")
    if not service.user and service.command in ("gateway", "serve"):
        lines += ["AmbientCapabilities=CAP_NET_BIND_SERVICE",  # ports 80/443
                  "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    elif not service.user:
        lines.append("CapabilityBoundingSet=")
    lines += ["", "[Install]",
              f"WantedBy={'default.target' if service.user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def describe(command: str, args: tuple[str, ...], user: bool) -> Service:
    """The service for ``mesh COMMAND ARGS`` as this shell would run it."""
    executable = shutil.which("mesh") or sys.argv[0]
    return Service(command, args, user, str(Path(executable).resolve()), environ.home(),
                   Path.cwd(), os.environ.get("MESH_SIGNAL") or None)


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["systemctl", *(["--user"] if service.user else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def install(service: Service) -> str:
    """Write the unit; enable and start it where systemd runs. Returns what was done.
    The key is made now if there is none, so the unit's ``ReadWritePaths`` exists and
    ``mesh id`` tells the node id before the service first runs."""
    from .home import load_or_create

    load_or_create(service.home)
    service.path.parent.mkdir(parents=True, exist_ok=True)
    service.path.write_text(unit(service))
    if not systemd_running():
        return f"wrote {service.path} (systemd is not running here: not started)"
    for args in (("daemon-reload",), ("enable", "--now", service.name)):
        res = _systemctl(service, *args)
        if res.returncode != 0:
            raise ConfigError(f"systemctl {' '.join(args)}: {res.stderr.strip() or 'failed'}")
    return f"wrote {service.path}; enabled and started {service.name}"


def uninstall(service: Service) -> str:
    if systemd_running():
        _systemctl(service, "disable", "--now", service.name)
    if not service.path.exists():
        return f"{service.path} is not installed"
    service.path.unlink()
    if systemd_running():
        _systemctl(service, "daemon-reload")
    return f"removed {service.path}"


def state(service: Service) -> dict[str, object]:
    active = None
    if systemd_running() and service.path.exists():
        active = _systemctl(service, "is-active", service.name).stdout.strip() or None
    return {"unit": service.name, "path": str(service.path),
            "installed": service.path.exists(), "active": active}
