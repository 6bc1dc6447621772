"""The API's and the router's ports: chosen once per home, kept in ``<home>/ports.json``.

Kubeconfigs and SDK clients hold the URLs, so a restart (``turbok down && turbok
up``) must serve on the same ports. On the first start each port is a free one
picked at random *below* the kernel's ephemeral range
(``net.ipv4.ip_local_port_range``), so while turbok is down no outgoing
connection is handed that port and it is still free on the next start.
``turbok serve --port/--router-port`` (and ``turbok up``'s) move them; the new
ports are kept in turn. A kept port that another process took is an error that
names the port and how to move it (``PortInUse``), never a silent move.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from turbok.errors import TurbokError
from turbok.home import Home

__all__ = ["PortInUse", "Ports", "candidates", "load", "save"]

_LOWEST = 20000  # above the usual fixed service ports
_TRIES = 50


class PortInUse(TurbokError):
    """A port this home serves on is taken by another process."""


@dataclass(frozen=True)
class Ports:
    """0 means "not chosen yet"."""

    api: int = 0
    router: int = 0


def load(home: Home) -> Ports:
    try:
        data = json.loads(home.ports.read_text())
        api, router = int(data.get("api", 0)), int(data.get("router", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return Ports()
    valid = [p if 0 < p < 65536 else 0 for p in (api, router)]
    return Ports(api=valid[0], router=valid[1])


def save(home: Home, ports: Ports) -> None:
    tmp = home.ports.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api": ports.api, "router": ports.router}, f)
    os.replace(tmp, home.ports)


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def candidates() -> Iterator[int]:
    """Ports to try for a first start: random ones below the ephemeral range, then 0 (any)."""
    high = _ephemeral_low() - 1
    if high > _LOWEST:
        yield from random.sample(range(_LOWEST, high + 1), min(_TRIES, high + 1 - _LOWEST))
    yield 0
