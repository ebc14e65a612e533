"""The staged rotation protocol for one secret (see :mod:`infratool.tasks.secrets_rotation`).

generate → store as pending (sops) → deliver → verify → promote, or roll back;
every step idempotent, so a rerun after a crash resumes from what the sops
file holds. The task module decides *what* rotates; this module does it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from infratool import log
from infratool.context import HostContext
from infratool.errors import InfratoolError, SecretsError, VerifyError
from infratool.faults import fault_point
from infratool.hidden import REDACTOR, Secret
from infratool.secrets import generators, state
from infratool.secrets.lock import rotation_lock
from infratool.secrets.policy import Consumer, SecretPolicy
from infratool.secrets.store import SopsStore

PENDING = "_rotation/pending/"
PREVIOUS = "_rotation/previous/"


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


class Rotator:
    """Runs the staged protocol for one secret against live host contexts."""

    def __init__(
        self, store: SopsStore, state_file: Path, hosts: dict[str, HostContext], lock_wait: float | None = 0
    ) -> None:
        self.store = store
        self.state_file = state_file
        self.hosts = hosts
        self.lock_wait = lock_wait
        self.log = log.get_logger("infratool.rotation")

    def _save(self, name: str, **record: Any) -> None:
        # A read-modify-write under the state file's own lock: rotations of
        # secrets in other sops files (other locks) save here too.
        with state.locked(self.state_file) as st:
            entry = st.get(name)
            if record.pop("promoted", False):
                entry.promoted()
            else:
                entry.record(**record)

    def rotate(self, spec: SecretPolicy) -> str:
        """Rotate (or resume rotating) ``spec``; returns a one-line outcome; raises on failure."""
        path = self.store.path(spec.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Threads of this run take turns on a file (flock would refuse them as
        # if they were another process); other processes meet the flock.
        with _thread_lock(path), rotation_lock(path, wait=self.lock_wait):
            self.store.invalidate(spec.file)
            values = self.store.read(spec.file, missing_ok=True)
            current = values.get(spec.key)
            pending = values.get(pending_key(spec.key))
            if pending is None:
                new = generators.generate(spec.generator, spec.params).value
                fault_point("generated")
                self.store.write(spec.file, {pending_key(spec.key): new})
                self._save(spec.name, status="pending", result="pending stored", phase="stored")
                fault_point("stored")
                pending = new
            else:
                self.log.info("resuming rotation", secret=spec.name)
            try:
                self._deliver_all(spec, pending)
                fault_point("delivered")
                self._verify_all(spec, pending)
                fault_point("verified")
            except InfratoolError as exc:
                problem = REDACTOR.redact(str(exc))
                rollback = self._rollback(spec, current)
                self.store.write(spec.file, {pending_key(spec.key): None})
                self._save(spec.name, status="failed", result="rolled back", error=problem)
                raise VerifyError(f"rotation of {spec.name} failed: {problem}; {rollback}") from None
            update: dict[str, Secret | None] = {spec.key: pending, pending_key(spec.key): None}
            if current is not None:
                update[previous_key(spec.key)] = current
            # Recorded first, so a crash right after the sops write is recognised
            # as a finished promotion (not rotated a second time).
            self._save(spec.name, status="pending", result="promoting", phase="promoting")
            self.store.write(spec.file, update)
            fault_point("promoted")
            self._save(spec.name, promoted=True)
        return f"{spec.name} rotated, delivered to {len(spec.consumers)} consumer(s), verified"

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
                stdin=_line(consumer.command.render_stdin(payload, public)),
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
            stdin=_line(consumer.verify.render_stdin(payload, public)),
            check=False,
            what=f"verify {spec.name}",
        )
        if res.ok:
            return None
        detail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.exited}"
        return f"{consumer.host}: {detail}"

    def _verify_all(self, spec: SecretPolicy, value: Secret) -> None:
        problems = [p for c in spec.consumers if (p := self.check(spec, c, value))]
        if problems:
            raise VerifyError(f"verify failed on {'; '.join(problems)}")

    def _rollback(self, spec: SecretPolicy, current: Secret | None) -> str:
        if current is None:
            return "no previous value to roll back to (first rotation)"
        broken = []
        for consumer in spec.consumers:
            try:
                self.deliver(spec, consumer, current)
                if self.check(spec, consumer, current):
                    broken.append(consumer.host)
            except InfratoolError:
                broken.append(consumer.host)
        if broken:
            return f"ROLLBACK INCOMPLETE on {', '.join(broken)}: the current value does not verify there"
        return "every consumer is back on the current value"

    def _host(self, consumer: Consumer) -> HostContext:
        host = self.hosts.get(consumer.host)
        if host is None:
            raise SecretsError(f"consumer host {consumer.host} is not reachable")
        return host


def _line(value: Secret) -> Secret:
    """Command stdin ends with a newline, so `read -r VAR` in a verify script gets the value."""
    raw = value.reveal_bytes()
    return value if raw.endswith(b"\n") else Secret(raw + b"\n")
