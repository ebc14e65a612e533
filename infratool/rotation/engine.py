"""The staged rotation protocol for one secret (see :mod:`infratool.tasks.secrets_rotation`).

generate → store as pending (sops) → deliver → verify → promote, or roll back;
every step idempotent, so a rerun after a crash resumes from what the sops
file holds. The task module decides *what* rotates; this module does it.

A secret and the secrets derived from it (``from:``) rotate as one group:
their pending values are stored in one sops write, all their consumers are
delivered and verified, and one write promotes them all (or all roll back).
A generator with a lease (Vault) keeps its lease id in the sops file
(``_rotation/lease/NAME``); after a promotion the previous lease waits in
``_rotation/retire/NAME`` until the generator has retired (revoked) it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infratool import log
from infratool.context import HostContext
from infratool.errors import InfratoolError, SecretsError, VerifyError
from infratool.faults import fault_point
from infratool.rotation import state
from infratool.rotation.lock import rotation_lock
from infratool.rotation.policy import Command, Consumer, SecretPolicy, render_template
from infratool.secrets import generators
from infratool.secrets.secret import REDACTOR, Secret
from infratool.secrets.store import SopsStore

PENDING = "_rotation/pending/"
PREVIOUS = "_rotation/previous/"
LEASE = "_rotation/lease/"
PENDING_LEASE = "_rotation/pending-lease/"
RETIRE = "_rotation/retire/"


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


def pending_key(name: str) -> str:
    """Where a secret's pending (not yet promoted) value is kept in its sops file."""
    return PENDING + name


def previous_key(name: str) -> str:
    """Where a secret's previous value is kept after promotion."""
    return PREVIOUS + name


def lease_key(name: str) -> str:
    """Where the lease id of a secret's current value is kept (``generator: vault``)."""
    return LEASE + name


def pending_lease_key(name: str) -> str:
    """Where the lease id of a secret's pending value is kept."""
    return PENDING_LEASE + name


def retire_key(name: str) -> str:
    """Where a promoted secret's previous lease waits until it is revoked."""
    return RETIRE + name


def current_values(values: Mapping[str, Secret], specs: Mapping[str, SecretPolicy]) -> dict[str, Secret]:
    """The current value of each policy secret the sops file holds, by name."""
    return {n: values[s.key] for n, s in specs.items() if s.key in values}


def _keys(group: list[SecretPolicy]) -> list[str]:
    return [s.key for s in group]


class Rotator:
    """Runs the staged protocol for one secret, or a secret and those derived from it."""

    def __init__(
        self,
        store: SopsStore,
        state_file: Path,
        hosts: dict[str, HostContext],
        lock_wait: float | None = 0,
        specs: Mapping[str, SecretPolicy] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.store = store
        self.state_file = state_file
        self.hosts = hosts
        self.lock_wait = lock_wait
        self.specs = dict(specs or {})
        """The whole policy's secrets, for the public parts of ``from:`` secrets."""
        self.cwd = cwd
        """Where ``generator: command`` runs (the repo root)."""
        self._in_effect: dict[str, Secret] = {}
        self.log = log.get_logger("infratool.rotation")

    def _save(self, name: str, **record: Any) -> None:
        # A read-modify-write under the state file's own lock: rotations of
        # secrets in other sops files (other locks) save here too.
        with state.locked(self.state_file) as st:
            entry = st.get(name)
            if "lease_ttl" in record:
                entry.lease_ttl = record.pop("lease_ttl")
            if record.pop("promoted", False):
                entry.promoted()
            else:
                entry.record(**record)

    def rotate(self, spec: SecretPolicy, provided: Mapping[str, Secret] | None = None) -> str:
        """Rotate (or resume rotating) ``spec``; returns a one-line outcome; raises on failure."""
        return self.rotate_group([spec], provided)

    def rotate_group(self, group: list[SecretPolicy], provided: Mapping[str, Secret] | None = None) -> str:
        """Rotate ``group`` (sources before derived; one sops file) as one staged rotation.

        Every member gets a pending value in one sops write; every consumer of
        every member is delivered, then verified; one write promotes them all,
        or every consumer goes back to the current values. ``provided``: values
        a person gave (``prompt`` secrets), by name.
        """
        provided = provided or {}
        file = group[0].file
        path = self.store.path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Threads of this run take turns on a file (flock would refuse them as
        # if they were another process); other processes meet the flock.
        with _thread_lock(path), rotation_lock(path, wait=self.lock_wait):
            self.store.invalidate(file)
            values = self.store.read(file, missing_ok=True)
            self._retire_leftovers(group, values)
            current = {s.name: values.get(s.key) for s in group}
            pending: dict[str, Secret] = {}
            staged: dict[str, Secret | None] = {}
            ttls: dict[str, int] = {}
            fresh: set[str] = set()
            try:
                for spec in group:
                    found = values.get(pending_key(spec.key))
                    # A value a person just gave replaces one an interrupted run left
                    # pending, and whatever is derived from a new value is derived again.
                    if found is None or spec.name in provided or fresh.intersection(spec.depends):
                        fresh.add(spec.name)
                        made = self._generate(spec, values, pending, provided)
                        staged[pending_key(spec.key)] = made.value
                        if made.lease is not None:
                            staged[pending_lease_key(spec.key)] = made.lease.id
                            ttls[spec.name] = made.lease.ttl
                        found = made.value
                    else:
                        self.log.info("resuming rotation", secret=spec.name)
                    pending[spec.name] = found
            except InfratoolError as exc:
                # Nothing was stored: a lease already issued in this loop is returned.
                self._retire_new(group, staged)
                for spec in group:
                    self._save(spec.name, status="failed", result="not generated", error=str(exc))
                raise
            if staged:
                fault_point("generated")
                self.store.write(file, staged)
                for spec in group:
                    self._save(spec.name, status="pending", result="pending stored", phase="stored")
                fault_point("stored")
            self._in_effect = {**current_values(values, self.specs), **pending}
            try:
                for spec in group:
                    self._deliver_all(spec, pending[spec.name])
                fault_point("delivered")
                problems = [p for spec in group for p in self._problems(spec, pending[spec.name])]
                if problems:
                    raise VerifyError(f"verify failed on {'; '.join(problems)}")
                fault_point("verified")
            except InfratoolError as exc:
                problem = REDACTOR.redact(str(exc))
                self._in_effect = current_values(values, self.specs)
                rollback = "; ".join(self._rollback(spec, current[spec.name]) for spec in group)
                fault_point("rolled-back")
                new_leases = {k: values.get(k) or staged.get(k) for k in map(pending_lease_key, _keys(group))}
                discard: dict[str, Secret | None] = {pending_key(k): None for k in _keys(group)}
                discard.update({k: None for k in new_leases})
                self.store.write(file, discard)
                fault_point("discarded")
                self._retire_new(group, new_leases)
                for spec in group:
                    self._save(spec.name, status="failed", result="rolled back", error=problem)
                names = ", ".join(s.name for s in group)
                raise VerifyError(f"rotation of {names} failed: {problem}; {rollback}") from None
            update: dict[str, Secret | None] = {}
            for spec in group:
                update.update({spec.key: pending[spec.name], pending_key(spec.key): None})
                if current[spec.name] is not None:
                    update[previous_key(spec.key)] = current[spec.name]
                new_lease = values.get(pending_lease_key(spec.key)) or staged.get(pending_lease_key(spec.key))
                if new_lease is not None:
                    old_lease = values.get(lease_key(spec.key))
                    update[lease_key(spec.key)] = new_lease
                    update[pending_lease_key(spec.key)] = None
                    if old_lease is not None:
                        # Kept until Vault confirms the revoke: a crash or refusal retries it.
                        update[retire_key(spec.key)] = old_lease
            # Recorded first, so a crash right after the sops write is recognised
            # as a finished promotion (not rotated a second time).
            for spec in group:
                self._save(spec.name, status="pending", result="promoting", phase="promoting")
            fault_point("promoting")
            self.store.write(file, update)
            fault_point("promoted")
            for spec in group:
                extra = {"lease_ttl": ttls[spec.name]} if spec.name in ttls else {}
                self._save(spec.name, promoted=True, **extra)
            retired = self._retire_previous(group, update)
        consumers = sum(len(s.consumers) for s in group)
        names = " + ".join(s.name for s in group)
        return f"{names} rotated, delivered to {consumers} consumer(s), verified{retired}"

    def _generate(
        self,
        spec: SecretPolicy,
        values: Mapping[str, Secret],
        pending: Mapping[str, Secret],
        provided: Mapping[str, Secret],
    ) -> generators.Generated:
        """A new value for ``spec``; derived ones from their sources' new (or current) values."""
        deps: dict[str, Secret] = {}
        publics: dict[str, str | None] = {}
        for dep in spec.depends:
            value = pending.get(dep) or values.get(dep)
            if value is None:
                dep_spec = self.specs.get(dep)
                how = (
                    f"infratool secrets set {dep}" if dep_spec and dep_spec.needs_person else f"rotate {dep}"
                )
                raise SecretsError(f"{spec.name} is derived from {dep}, which has no value yet: {how}")
            deps[dep] = value
            dep_spec = self.specs.get(dep)
            publics[dep] = generators.public_part(dep_spec.generator, value) if dep_spec else None
        ctx = generators.GenContext(
            name=spec.name,
            previous=values.get(spec.key),
            deps=deps,
            dep_publics=publics,
            order=spec.depends,
            provided=provided.get(spec.name),
            cwd=self.cwd,
        )
        return generators.generate(spec.generator, spec.params, ctx)

    def _retire(self, spec: SecretPolicy, lease_id: Secret) -> str | None:
        """Retire one lease through the generator; the problem, or ``None``."""
        retire = generators.get(spec.generator).retire
        if retire is None:
            return None
        try:
            retire(spec.params, generators.Lease(lease_id, 0))
        except InfratoolError as exc:
            return REDACTOR.redact(str(exc))
        return None

    def _retire_new(self, group: list[SecretPolicy], leases: Mapping[str, Secret | None]) -> None:
        """Return leases of values that will never be used (best effort, logged)."""
        for spec in group:
            lease = leases.get(pending_lease_key(spec.key))
            if lease is not None and (problem := self._retire(spec, lease)):
                self.log.warning("could not revoke the unused new lease", secret=spec.name, error=problem)

    def _retire_previous(self, group: list[SecretPolicy], update: Mapping[str, Secret | None]) -> str:
        """Revoke the previous leases of a promoted group; drop each from sops once revoked."""
        done: dict[str, Secret | None] = {}
        failed = []
        for spec in group:
            old = update.get(retire_key(spec.key))
            if old is None:
                continue
            problem = self._retire(spec, old)
            if problem:
                failed.append(spec.name)
                self.log.warning(
                    "previous lease not revoked; retried next run", secret=spec.name, error=problem
                )
            else:
                done[retire_key(spec.key)] = None
        if done:
            self.store.write(group[0].file, done)
        if failed:
            return f"; previous lease of {', '.join(failed)} NOT revoked (retried next run)"
        return "; previous lease revoked" if done else ""

    def _retire_leftovers(self, group: list[SecretPolicy], values: Mapping[str, Secret]) -> None:
        """Revoke previous leases that an earlier run promoted but could not revoke."""
        leftovers = {
            retire_key(s.key): values[retire_key(s.key)] for s in group if retire_key(s.key) in values
        }
        if leftovers:
            self._retire_previous(group, leftovers)

    def retire_leftovers(self, spec: SecretPolicy) -> str:
        """Only revoke ``spec``'s previous lease left by an earlier run (under the file's lock)."""
        path = self.store.path(spec.file)
        with _thread_lock(path), rotation_lock(path, wait=self.lock_wait):
            self.store.invalidate(spec.file)
            values = self.store.read(spec.file, missing_ok=True)
            old = values.get(retire_key(spec.key))
            if old is None:
                return f"{spec.name}: nothing to revoke"
            return f"{spec.name}: {self._retire_previous([spec], {retire_key(spec.key): old}).lstrip('; ')}"

    def _value_for(self, spec: SecretPolicy, consumer: Consumer, value: Secret) -> tuple[Secret, str | None]:
        public = generators.public_part(spec.generator, value) if spec.has_public else None
        if consumer.part == "public":
            return Secret(public or ""), public
        return value, public

    def _deliver_all(self, spec: SecretPolicy, value: Secret) -> None:
        for i, consumer in enumerate(spec.consumers):
            self.deliver(spec, consumer, value)
            if i == 0:
                fault_point("delivered-one")

    def deliver(self, spec: SecretPolicy, consumer: Consumer, value: Secret) -> None:
        """Give one consumer ``value`` (file and/or command), then reload it."""
        host = self._host(consumer)
        payload, public = self._value_for(spec, consumer, value)
        if consumer.file is not None:
            f = consumer.file
            host.put_file(f.path, payload, mode=f.mode, owner=f.owner, group=f.group)
        if consumer.command is not None:
            host.run(
                consumer.command.run,
                stdin=_line(self._stdin(spec, consumer.command, payload, public)),
                what=f"deliver {spec.name}",
            )
        for cmd in consumer.reload:
            host.run(cmd, what=f"reload after {spec.name}")

    def check(self, spec: SecretPolicy, consumer: Consumer, value: Secret) -> str | None:
        """Run one consumer's verify command with ``value`` on stdin; the problem, or None."""
        if consumer.verify is None:
            return None
        payload, public = self._value_for(spec, consumer, value)
        res = self._host(consumer).run(
            consumer.verify.run,
            stdin=_line(self._stdin(spec, consumer.verify, payload, public)),
            check=False,
            what=f"verify {spec.name}",
        )
        if res.ok:
            return None
        detail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.exited}"
        return f"{consumer.host}: {detail}"

    def _stdin(self, spec: SecretPolicy, command: Command, payload: Secret, public: str | None) -> Secret:
        """A command's stdin; for a derived secret ``{NAME}`` of a ``from:`` secret works too.

        So the consumer of a hash can verify with the password it was made
        from (log in to nginx with it). The values in effect are the ones
        being delivered: the new ones, or the current ones while rolling back.
        """
        text = command.stdin
        if spec.depends and any("{" + d + "}" in text for d in spec.depends):
            values = {d: self._in_effect[d] for d in spec.depends if d in self._in_effect}
            pattern = re.compile(r"\{(" + "|".join(re.escape(d) for d in values) + r")\}")
            parts = pattern.split(text)
            # Odd parts are dependency names; even parts are rendered as usual ({value}, {public}).
            out = b"".join(
                _bytes(values[p]) if i % 2 else render_template(p, payload, public).reveal_bytes()
                for i, p in enumerate(parts)
            )
            return Secret(out)
        return command.render_stdin(payload, public)

    def _problems(self, spec: SecretPolicy, value: Secret) -> list[str]:
        return [p for c in spec.consumers if (p := self.check(spec, c, value))]

    def _rollback(self, spec: SecretPolicy, current: Secret | None) -> str:
        if current is None:
            return "no previous value to roll back to (first rotation)"
        broken = []
        for i, consumer in enumerate(spec.consumers):
            try:
                self.deliver(spec, consumer, current)
                if self.check(spec, consumer, current):
                    broken.append(consumer.host)
            except InfratoolError:
                broken.append(consumer.host)
            if i == 0:
                fault_point("rolled-back-one")
        if broken:
            return f"ROLLBACK INCOMPLETE on {', '.join(broken)}: the current value does not verify there"
        return "every consumer is back on the current value"

    def _host(self, consumer: Consumer) -> HostContext:
        host = self.hosts.get(consumer.host)
        if host is None:
            raise SecretsError(f"consumer host {consumer.host} is not reachable")
        return host


def _bytes(value: Secret) -> bytes:
    return value.reveal_bytes()


def _line(value: Secret) -> Secret:
    """Command stdin ends with a newline, so `read -r VAR` in a verify script gets the value."""
    raw = value.reveal_bytes()
    return value if raw.endswith(b"\n") else Secret(raw + b"\n")
