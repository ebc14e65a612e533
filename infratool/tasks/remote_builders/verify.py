"""Proving remote builds work: a real ``nix store ping`` and a real build that runs on the builder.

From each client, for each builder:

1. ``nix store ping --store ssh-ng://user@builder?ssh-key=KEY`` — the client
   key logs in, sshd forces ``nix-daemon --stdio``, root's known_hosts pins
   the builder (no first-use trust: without a TTY OpenSSH refuses unknown keys).
2. ``nix-build --max-jobs 0 --builders '<the installed machines line>'`` of a
   derivation with a fresh nonce: with no local build slots it must build
   remotely, through exactly the line the client has installed (its host key
   field included).
3. ``nix-store --check-validity OUT`` on the builder: the output exists in the
   builder's own store, so the build really ran there.
"""

from __future__ import annotations

import secrets
import shlex
from concurrent.futures import ThreadPoolExecutor

from infratool import nixgen
from infratool.context import HostContext
from infratool.inventory import Host
from infratool.tasks.remote_builders.render import MACHINES, machines_fields, store_uri
from infratool.tasks.remote_builders.spec import Builder, Topology

PING_TIMEOUT = 60.0
BUILD_TIMEOUT = 300.0


def check_derivation(builder: Builder, nonce: str) -> str:
    """A tiny derivation only ``builder`` can build: /bin/sh writes the build host's name.

    Builders may have an empty PATH and only ``/bin/sh``, hence ``read``
    instead of ``hostname``. The nonce makes it new, so nothing has built it yet.
    """
    script = "read h < /proc/sys/kernel/hostname; echo $h > $out"
    attrs = {
        "name": f"infratool-rb-check-{nonce}",
        "system": builder.build_system,
        "builder": "/bin/sh",
        "args": ["-c", script],
        "requiredSystemFeatures": list(builder.mandatory_features),
    }
    return f"derivation {nixgen.to_nix(attrs)}"


def installed_line(machines: str, uri: str) -> str | None:
    """The line of a machines file whose URI is ``uri`` (fields only, comment stripped)."""
    for raw in machines.replace(";", "\n").splitlines():
        fields = machines_fields(raw)
        if fields and fields[0] == uri:
            return " ".join(fields)
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def check_pair(
    cctx: HostContext, client: Host, builder: Builder, bctx: HostContext | None, topo: Topology
) -> list[str]:
    """Problems found checking that ``client`` builds on ``builder`` (empty: it works)."""
    problems: list[str] = []
    uri = store_uri(topo.protocol, builder)
    key = topo.client_key_path(client)
    ping = cctx.run(
        "nix --extra-experimental-features nix-command store ping --store "
        + shlex.quote(f"{uri}?ssh-key={key}"),
        check=False,
        what=f"nix store ping {uri}",
        timeout=PING_TIMEOUT,
    )
    if not ping.ok:
        problems.append(f"nix store ping {uri} with {key} failed: {_last_line(ping.stderr)}")
    machines = (cctx.read_file(MACHINES) or b"").decode(errors="replace")
    line = installed_line(machines, uri)
    if line is None:
        problems.append(f"{MACHINES} has no line for {uri}")
        return problems
    expr = check_derivation(builder, secrets.token_hex(6))
    built = cctx.run(
        f"nix-build --no-out-link --max-jobs 0 --builders {shlex.quote(line)} -E {shlex.quote(expr)}",
        check=False,
        what=f"remote build on {builder.name}",
        timeout=BUILD_TIMEOUT,
    )
    if not built.ok:
        problems.append(f"build on {builder.name} (--max-jobs 0) failed: {_last_line(built.stderr)}")
        return problems
    out = _last_line(built.stdout)
    if bctx is not None:
        there = bctx.run(
            f"nix-store --check-validity {shlex.quote(out)}", check=False, what="check the build output"
        )
        if not there.ok:
            problems.append(f"{out} is not in {builder.name}'s store: the build did not run there")
    return problems


def check_clients(
    clients: list[tuple[HostContext, Host]],
    builders: list[tuple[Builder, HostContext | None]],
    topo: Topology,
) -> dict[str, str]:
    """Check every (client, builder) pair, clients in parallel; client name → problems."""

    def one(item: tuple[HostContext, Host]) -> tuple[str, list[str]]:
        cctx, client = item
        found: list[str] = []
        for builder, bctx in builders:
            found += check_pair(cctx, client, builder, bctx, topo)
        return client.name, found

    if not clients or not builders:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(clients)), thread_name_prefix="rb-check") as pool:
        results = list(pool.map(one, clients))
    return {name: "; ".join(found) for name, found in results if found}
