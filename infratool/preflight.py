"""Local mistakes of the selected hosts, found once and before any connection (exit 3).

A missing ``ssh_key`` file used to cost every host a TCP connection and a key
exchange before failing (exit 1 per host), and a malformed pin was reported
as a refused host key (exit 4). Both are bad input in the inventory: name the
file and the host's line, and open nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from infratool.errors import InputError
from infratool.inventory import Host, Inventory
from infratool.knownhosts import key_problem


def check_hosts(inventory: Inventory, hosts: Iterable[Host]) -> None:
    """Raise :class:`InputError` for the first selected host whose local settings cannot work."""
    for host in hosts:
        where = {"file": inventory.path, "line": host.line}
        key = host.ssh_key
        if key is not None:
            if not key.is_file():
                raise InputError(f"host {host.name!r}: ssh_key {key} does not exist", **where)
            if not os.access(key, os.R_OK):
                raise InputError(f"host {host.name!r}: ssh_key {key} cannot be read", **where)
        for pin in host.host_keys:
            keytype, _, data = pin.partition(" ")
            problem = key_problem(keytype, data)
            if problem is not None:
                raise InputError(f"host {host.name!r}: malformed pinned host key: {problem}", **where)
