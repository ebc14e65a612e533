"""Drift: does every consumer still accept the value sops holds as current?

A rotation proves its consumers accept the new value once. Later, someone may
reset a password by hand, restore a backup, or reinstall a host: the
consumer then rejects the value the fleet repo holds, and nobody knows until
the next deploy or rotation fails. :func:`check` runs every consumer's
``verify`` with the **current** value (the same command, the same stdin as a
rotation's verify) and rotates nothing. On an ``os: nixos`` host it first
compares the file sops-nix installed with the current value (on the host,
value on stdin): a host running another generation than the flake's is
drift too, even for a consumer without a verify command.

Each sops file is checked under its rotation lock, so a check never sees a
rotation half-way (a consumer holding the pending value would look drifted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from infratool.context import HostContext
from infratool.errors import InfratoolError
from infratool.rotation.lock import rotation_lock
from infratool.rotation.policy import Consumer, Policy, SecretPolicy
from infratool.rotation.secret import pending_key
from infratool.rotation.secret_nixos import installed_problem
from infratool.rotation.secret_plan import check_current
from infratool.secrets.secret import REDACTOR
from infratool.secrets.store import SopsStore

Status = Literal["ok", "rejected", "unreachable", "interrupted", "unchecked"]
FAILING: tuple[str, ...] = ("rejected", "unreachable", "interrupted")
"""Findings that make ``secrets check`` exit 1."""


@dataclass(frozen=True)
class Finding:
    """What the check found for one consumer of one secret."""

    secret: str
    host: str
    status: Status
    detail: str = ""

    @property
    def failing(self) -> bool:
        """Whether this finding is drift (or could not be ruled out)."""
        return self.status in FAILING

    def line(self) -> str:
        """``postgres/app on brix: rejected (…)`` — names and verdicts, never a value."""
        return f"{self.secret} on {self.host}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def check(
    policy: Policy,
    store: SopsStore,
    hosts: Mapping[str, HostContext],
    unreachable: Mapping[str, str],
    secrets: Iterable[SecretPolicy],
    lock_wait: float | None = 30,
    forks: int = 10,
) -> list[Finding]:
    """Run the verify of every consumer of ``secrets`` with its current value; one finding each."""
    by_file: dict[Path, list[SecretPolicy]] = {}
    for spec in secrets:
        by_file.setdefault(spec.file, []).append(spec)
    findings: list[Finding] = []
    for file, specs in by_file.items():
        path = store.path(file)
        if not path.is_file():
            findings += [_unchecked(s, c, "no value yet: never rotated") for s in specs for c in s.consumers]
            continue
        try:
            with rotation_lock(path, wait=lock_wait):
                store.invalidate(file)
                values = store.read(file)
                findings += _check_file(policy, store, hosts, unreachable, specs, values, forks)
        except InfratoolError as exc:
            # The lock is held by a rotation that outlived --wait, or the file cannot be read.
            problem = REDACTOR.redact(str(exc))
            findings += [Finding(s.name, c.host, "interrupted", problem) for s in specs for c in s.consumers]
    return findings


def _nixos(hosts: Mapping[str, HostContext], name: str) -> bool:
    """Whether ``name`` is a reachable ``os: nixos`` host (its sops-nix file can be compared)."""
    return name in hosts and hosts[name].host.is_nixos


def _unchecked(spec: SecretPolicy, consumer: Consumer, why: str) -> Finding:
    return Finding(spec.name, consumer.host, "unchecked", why)


def _check_file(
    policy: Policy,
    store: SopsStore,
    hosts: Mapping[str, HostContext],
    unreachable: Mapping[str, str],
    specs: list[SecretPolicy],
    values: Mapping[str, object],
    forks: int,
) -> list[Finding]:
    """The findings of one sops file's secrets; each host's checks run in order, hosts in parallel."""
    out: dict[tuple[int, int], Finding] = {}
    work: dict[str, list[tuple[tuple[int, int], SecretPolicy, Consumer]]] = {}
    for i, spec in enumerate(specs):
        for j, consumer in enumerate(spec.consumers):
            key = (i, j)
            if spec.key not in values:
                out[key] = _unchecked(spec, consumer, "no value yet: never rotated")
            elif pending_key(spec.key) in values:
                out[key] = Finding(
                    spec.name,
                    consumer.host,
                    "interrupted",
                    "a rotation was interrupted: `infratool secrets rotate --due` finishes it",
                )
            elif consumer.verify is None and not _nixos(hosts, consumer.host):
                out[key] = _unchecked(spec, consumer, "no verify command in the policy")
            elif consumer.host not in hosts:
                out[key] = Finding(
                    spec.name, consumer.host, "unreachable", unreachable.get(consumer.host, "")
                )
            else:
                work.setdefault(consumer.host, []).append((key, spec, consumer))

    def run_host(items: list[tuple[tuple[int, int], SecretPolicy, Consumer]]) -> None:
        for key, spec, consumer in items:
            try:
                host = hosts[consumer.host]
                problem = None
                if host.host.is_nixos:  # what sops-nix installed, then the consumer's own verify
                    problem = installed_problem(host, spec, consumer, values)  # type: ignore[arg-type]
                if problem is None:
                    problem = check_current(host, spec, consumer, values, policy.secrets)  # type: ignore[arg-type]
            except InfratoolError as exc:
                problem = f"{consumer.host}: {exc}"
            if problem is None:
                out[key] = Finding(spec.name, consumer.host, "ok")
            else:
                detail = REDACTOR.redact(problem.split(": ", 1)[-1])
                out[key] = Finding(spec.name, consumer.host, "rejected", detail)

    if work:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(work)))) as pool:
            list(pool.map(run_host, work.values()))
    return [out[k] for k in sorted(out)]


def summary(findings: list[Finding]) -> str:
    """One notification text naming every drifted secret and host."""
    bad = [f for f in findings if f.failing]
    return f"drift: {len(bad)} consumer(s) do not accept their current value: " + "; ".join(
        f.line() for f in bad
    )
