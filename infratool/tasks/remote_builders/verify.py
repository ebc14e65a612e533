"""Proving remote builds work: a real ``nix store ping`` and a real build that runs on the builder.

From each client, for each builder:

1. ``nix store ping --store ssh-ng://user@builder?ssh-key=KEY`` — the client
   key logs in, sshd forces ``nix-daemon --stdio``, root's known_hosts pins
   the builder (no first-use trust: without a TTY OpenSSH refuses unknown keys).
2. ``nix-build --max-jobs 0`` of a derivation with a fresh nonce, through the
   client's installed configuration (nix.conf ``builders = @/etc/nix/machines``,
   the machines line's pinned host key): with no local build slots it must
   build remotely. With several builders, each one Nix did not pick gets a
   build through its own installed line (``--builders '<line>'``).
3. ``nix-store --check-validity OUT`` on the builder: the output exists in the
   builder's own store, so the build really ran there. The ``remote_builders.check``
   action has only the client's connection (a saved plan applies each change
   on its own host): it asks the builder's store from the client instead,
   ``nix path-info --store URI?ssh-key=KEY OUT``, through the same pinned login.

The checks take builders as :class:`BuilderRef` data (name, store URI, build
system, features), so a check change carries them in its args.
"""

from __future__ import annotations

import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from infratool import nixgen
from infratool.context import HostContext
from infratool.inventory import Host
from infratool.remote import Result
from infratool.tasks.remote_builders.filetext import MACHINES, machines_fields, store_uri
from infratool.tasks.remote_builders.spec import Builder, Topology

PING_TIMEOUT = 60.0
BUILD_TIMEOUT = 300.0
# A builder's store can turn a client away for a moment: every ssh-ng login
# starts its own `nix-daemon --stdio`, and clients checking at once can find
# the builder's SQLite database busy ("unexpected Nix daemon error: SQLite
# database ... is busy" in the builder's log), which the client only sees as
# "unexpected end-of-file". Such a failure is tried again after these pauses;
# any other failure is reported at once, and so is ssh's own refusal (a key
# or host key it rejects also ends in that end-of-file line).
TRANSIENT = ("unexpected end-of-file", "is busy")
REFUSED = ("Permission denied", "Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")
RETRY_PAUSES = (0.5, 1.5)


@dataclass(frozen=True)
class BuilderRef:
    """What a check needs to know of a builder: plain data (a check change's args hold it)."""

    name: str
    uri: str
    """The store URI clients use (``ssh-ng://user@infratool-builder-<name>``)."""
    system: str
    """The system its check derivation is built for."""
    features: tuple[str, ...] = ()
    """Its mandatory features (the derivation must require them to be built there)."""

    @classmethod
    def of(cls, builder: Builder, protocol: str) -> BuilderRef:
        """The reference to ``builder`` reached over ``protocol``."""
        return cls(
            builder.name, store_uri(protocol, builder), builder.build_system, builder.mandatory_features
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a change's args."""
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuilderRef:
        """Back from :meth:`to_dict`."""
        return cls(data["name"], data["uri"], data["system"], tuple(data.get("features") or ()))


def check_derivation(builder: Builder | BuilderRef, nonce: str) -> str:
    """A tiny derivation only ``builder`` can build: /bin/sh writes the build host's name.

    Builders may have an empty PATH and only ``/bin/sh``, hence ``read``
    instead of ``hostname``. The nonce makes it new, so nothing has built it yet.
    """
    script = "read h < /proc/sys/kernel/hostname; echo $h > $out"
    attrs = {
        "name": f"infratool-rb-check-{nonce}",
        "system": builder.system if isinstance(builder, BuilderRef) else builder.build_system,
        "builder": "/bin/sh",
        "args": ["-c", script],
        "requiredSystemFeatures": list(
            builder.features if isinstance(builder, BuilderRef) else builder.mandatory_features
        ),
    }
    return f"derivation {nixgen.to_nix(attrs)}"


def installed_line(machines: str, uri: str) -> str | None:
    """The line of a machines file whose URI is ``uri`` (fields only, comment stripped)."""
    for raw in machines.replace(";", "\n").splitlines():
        fields = machines_fields(raw)
        if fields and fields[0] == uri:
            return " ".join(fields)
    return None


def failure_line(text: str) -> str:
    """The last line of ``text``, after ssh's refusal when there is one (Nix's own last
    line then only says "unexpected end-of-file")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    refused = [line for line in lines[:-1] if any(m in line for m in REFUSED)]
    return f"{refused[-1]} ({lines[-1]})" if refused else lines[-1]


def store_run(cctx: HostContext, command: str, what: str, timeout: float) -> Result:
    """Run a client command that talks to a builder's store, again after a transient refusal.

    See :data:`TRANSIENT`: a failure whose stderr says the connection was
    dropped (and not that ssh refused it, :data:`REFUSED`) is retried after
    each of :data:`RETRY_PAUSES`; the last result is returned either way.
    """
    result = cctx.run(command, check=False, what=what, timeout=timeout)
    for pause in RETRY_PAUSES:
        transient = any(m in result.stderr for m in TRANSIENT) and not any(
            m in result.stderr for m in REFUSED
        )
        if result.ok or not transient:
            break
        time.sleep(pause)
        result = cctx.run(command, check=False, what=what, timeout=timeout)
    return result


def _ping(cctx: HostContext, key: str, builder: BuilderRef) -> str | None:
    uri = builder.uri
    ping = store_run(
        cctx,
        "nix --extra-experimental-features nix-command store ping --store "
        + shlex.quote(f"{uri}?ssh-key={key}"),
        what=f"nix store ping {uri}",
        timeout=PING_TIMEOUT,
    )
    return None if ping.ok else f"nix store ping {uri} with {key} failed: {failure_line(ping.stderr)}"


def _build(cctx: HostContext, builder: BuilderRef, line: str | None) -> tuple[str | None, str | None]:
    """Build a fresh derivation with no local slots; ``(output path, problem)``.

    ``line`` None builds through the client's installed configuration
    (nix.conf ``builders = @/etc/nix/machines``) exactly as any build would.
    """
    expr = check_derivation(builder, secrets.token_hex(6))
    override = f"--builders {shlex.quote(line)} " if line is not None else ""
    built = store_run(
        cctx,
        f"nix-build --no-out-link --max-jobs 0 {override}-E {shlex.quote(expr)}",
        what=f"remote build on {builder.name}",
        timeout=BUILD_TIMEOUT,
    )
    if not built.ok:
        how = "its own machines line" if line is not None else "the installed configuration"
        return None, f"a --max-jobs 0 build through {how} failed: {failure_line(built.stderr)}"
    printed = built.stdout.split()
    return (printed[-1], None) if printed else (None, "the build printed no output path")


Where = HostContext | None
"""How to ask a builder's store: its own connection, or (None) through the client's pinned login."""


def _built_on(cctx: HostContext, key: str, out: str, builders: list[tuple[BuilderRef, Where]]) -> list[str]:
    """The builders whose own store holds ``out`` (where the build ran)."""
    found = []
    for builder, bctx in builders:
        if bctx is not None:
            res = bctx.run(
                f"nix-store --check-validity {shlex.quote(out)}", check=False, what="check the build"
            )
        else:
            res = store_run(
                cctx,
                "nix --extra-experimental-features nix-command path-info --store "
                + shlex.quote(f"{builder.uri}?ssh-key={key}")
                + f" {shlex.quote(out)}",
                what=f"look for the build in {builder.name}'s store",
                timeout=PING_TIMEOUT,
            )
        if res.ok:
            found.append(builder.name)
    return found


def check_builds(
    cctx: HostContext, key: str, builders: list[tuple[BuilderRef, Where]]
) -> tuple[list[str], list[str]]:
    """``(problems, proofs)`` of checking that the client ``cctx`` builds on ``builders``.

    Every builder is pinged with the client's ``key``. One build goes
    through the installed configuration as is; with several builders, Nix
    picks one, so each builder it did not pick also gets a build through its
    own installed line. A proof reads "built /nix/store/… on snix".
    """
    problems = [p for b, _ in builders if (p := _ping(cctx, key, b))]
    machines = (cctx.read_file(MACHINES) or b"").decode(errors="replace")
    lines: dict[str, str] = {}
    for builder, _ in builders:
        line = installed_line(machines, builder.uri)
        if line is None:
            problems.append(f"{MACHINES} has no line for {builder.uri}")
        else:
            lines[builder.name] = line
    if not builders or problems:
        return problems, []
    first, _ = builders[0]
    out, problem = _build(cctx, first, None)
    if problem or out is None:
        return [*problems, problem or "no build output"], []
    proven = _built_on(cctx, key, out, builders)
    if not proven:
        return [*problems, f"{out} is in no builder's store: the build did not run on a builder"], []
    proofs = [f"built {out} on {name}" for name in proven]
    for builder, bctx in builders:
        if builder.name in proven:
            continue
        out, problem = _build(cctx, builder, lines[builder.name])
        if problem or out is None:
            problems.append(f"{builder.name}: {problem}")
        elif not _built_on(cctx, key, out, [(builder, bctx)]):
            problems.append(f"{out} is not in {builder.name}'s store: the build did not run there")
        else:
            proofs.append(f"built {out} on {builder.name}")
    return problems, proofs


def check_client(
    cctx: HostContext, client: Host, builders: list[tuple[Builder, HostContext | None]], topo: Topology
) -> list[str]:
    """Problems found checking that ``client`` builds on ``builders`` (empty: it works)."""
    refs = [(BuilderRef.of(b, topo.protocol), bctx) for b, bctx in builders]
    return check_builds(cctx, topo.client_key_path(client), refs)[0]


def check_clients(
    clients: list[tuple[HostContext, Host]],
    builders: list[tuple[Builder, HostContext | None]],
    topo: Topology,
) -> dict[str, str]:
    """Check every client against every builder, clients in parallel; client name → problems."""

    def one(item: tuple[HostContext, Host]) -> tuple[str, list[str]]:
        cctx, client = item
        return client.name, check_client(cctx, client, builders, topo)

    if not clients or not builders:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(clients)), thread_name_prefix="rb-check") as pool:
        results = list(pool.map(one, clients))
    return {name: "; ".join(found) for name, found in results if found}
