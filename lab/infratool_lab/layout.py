"""What a lab should be: its hosts, their addresses and tags, and the lab.json that remembers them.

Pure data and one small file, no processes: :class:`infratool_lab.fleet.Lab`
asks :func:`wanted_specs` which hosts an ``up`` wants, records them with
:func:`save_state`, and reads them back with :func:`specs_from_state`.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

from infratool.errors import InputError
from infratool_lab import files
from infratool_lab.files import HostSpec

FLEET: dict[str, list[str]] = {
    "snix": ["workstation", "builder", "cache"],
    "slax": ["laptop"],
    "brix": ["server"],
    "nixtv-player": ["media"],
}
"""The default lab hosts and their tags, as in the real fleet's hosts.yaml."""

EXTRA_TAGS: tuple[str, ...] = ("scale",)
"""Tags of the hosts beyond the four (lab05, lab06, ...) of a scale lab."""

MAX_HOSTS = 200
DEFAULT_SUBNET = "127.0.0"


def validate_subnet(subnet: str) -> str:
    """``subnet`` if it is three loopback octets (127.x.y); InputError otherwise."""
    parts = subnet.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts) or parts[0] != "127":
        raise InputError(f"lab subnet {subnet!r} must be three octets inside loopback, like 127.0.0")
    return subnet


def nix_system() -> str:
    """This machine's Nix system name (x86_64-linux, aarch64-linux)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine) + "-linux"


def load_state(root: Path) -> dict:
    """The last `up`'s lab.json (``{}`` when there is none or it does not parse)."""
    try:
        return json.loads((root / "lab.json").read_text())
    except (OSError, ValueError):
        return {}


def save_state(root: Path, subnet: str, specs: Sequence[HostSpec]) -> None:
    """Record ``subnet`` and ``specs`` in lab.json (atomically), for the next `up` and for queries."""
    state = {
        "subnet": subnet,
        "hosts": [
            {"name": s.name, "address": s.address, "tags": list(s.tags), "port": s.port, "nixos": s.nixos}
            for s in specs
        ],
    }
    files.atomic_write(root / "lab.json", json.dumps(state, indent=1) + "\n")


def specs_from_state(root: Path) -> list[HostSpec]:
    """The hosts of the last `up`, in inventory order."""
    return [
        HostSpec(h["name"], h["address"], tuple(h["tags"]), h.get("port", 22), h.get("nixos", False))
        for h in load_state(root).get("hosts", [])
    ]


def wanted_specs(
    root: Path, subnet: str, count: int | None, nixos: bool | Sequence[str] | None = None
) -> list[HostSpec]:
    """The hosts an `up` of ``count`` hosts wants (see :meth:`Lab.up`); InputError for a bad count/name."""
    count = len(FLEET) if count is None else count
    if not 1 <= count <= MAX_HOSTS:
        raise InputError(f"a lab has 1 to {MAX_HOSTS} hosts, not {count}")
    named = [(n, tuple(t)) for n, t in FLEET.items()][:count]
    extra = [(f"lab{i:02d}", EXTRA_TAGS) for i in range(len(named) + 1, count + 1)]
    # A port moved by set_port() stays moved across `up`s, and so does
    # NixOS unless this `up` says which hosts are NixOS.
    before = {s.name: s for s in specs_from_state(root)}
    names = [n for n, _ in named + extra]
    if nixos is None:
        shaped = {n for n in names if n in before and before[n].nixos}
    elif nixos is True:
        shaped = set(names)
    elif nixos is False:
        shaped = set()
    else:
        unknown = sorted(set(nixos) - set(names))
        if unknown:
            raise InputError(f"--nixos names hosts this lab does not have: {', '.join(unknown)}")
        shaped = set(nixos)
    return [
        HostSpec(
            name,
            f"{subnet}.{10 + i}",
            tags,
            before[name].port if name in before else 22,
            name in shaped,
        )
        for i, (name, tags) in enumerate(named + extra)
    ]
