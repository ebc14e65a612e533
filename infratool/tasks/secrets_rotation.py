"""``secrets_rotation.rotate``: staged, verified, crash-safe rotation of sops secrets.

The protocol (after AWS Secrets Manager's createSecret → setSecret →
testSecret → finishSecret), per secret, under the lock of its sops file:

1. **generate** a new value (in memory only);
2. **store it as pending** — encrypted into the sops file under
   ``_rotation/pending/<name>`` *before* any consumer sees it, so a value that
   reaches a host always exists somewhere durable;
3. **deliver** it to every consumer (a 0600 file renamed into place, or a
   command fed the value on stdin), then run their reload commands;
4. **verify** on every consumer (a command fed the new value on stdin);
5. **promote** in one sops write: current ← new, ``_rotation/previous/<name>``
   ← old, pending removed; then record the rotation (time, generation) in
   the plaintext state file beside the secrets (never values).

A failed delivery or verify **rolls back**: every consumer gets the current
value again (reloaded, re-verified), the pending value is discarded, exit 1.

A crash (kill -9) at any point is recovered by the next run, because every
step is idempotent and the sops file says where things stand: no pending
value → nothing reached a consumer, start afresh; a pending value → resume
from delivery (deliver all, verify, promote — or roll back on failure).

Fault injection for the chaos tests: ``INFRATOOL_FAULT=<step>`` kills the
process with SIGKILL right after that step (``generated``, ``stored``,
``delivered-one``, ``delivered``, ``verified``, ``promoting`` — the state file
says "promoting", sops not yet written — and ``promoted``), or of a rollback
(``rolled-back-one``, ``rolled-back``, ``discarded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from infratool.changes import LOCAL, Change
from infratool.context import HostContext
from infratool.errors import InfratoolError
from infratool.inventory import Host, Inventory
from infratool.rotation import state
from infratool.rotation.legacy_rotator import Rotator, pending_key, retire_key
from infratool.rotation.lock import check_lock_file, lock_path
from infratool.rotation.notify import notify
from infratool.rotation.policy import SecretPolicy, load_policy, parse_policy
from infratool.secrets import deps, generators
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Source, Task, register

DEFAULT_POLICY = "secrets/rotation.yaml"


@dataclass
class Decision:
    """Why (and whether) one secret rotates in this run."""

    secret: SecretPolicy
    reason: str
    resume: bool = False
    finalize: bool = False
    """Only record a promotion that a crash interrupted before it was recorded."""
    group: list[SecretPolicy] = field(default_factory=list)
    """Everything rotating together: the secret(s) and those derived from them, sources first."""
    retire_only: bool = False
    """Only revoke a previous lease an earlier run could not revoke."""

    @property
    def members(self) -> list[SecretPolicy]:
        """The secrets this decision rotates."""
        return self.group or [self.secret]


NEEDS_PERSON = "due — needs a person"


def _check_names(value: list) -> str | None:
    return None if all(isinstance(v, str) and v for v in value) else "must be a list of secret names"


@register
class RotateSecrets(Task):
    """Rotate the secrets of a rotation policy that are due (or named)."""

    name = "secrets_rotation.rotate"
    summary = "staged rotation: pending in sops → deliver → verify → promote (rollback on failure)"
    params = {
        "policy": Param(str, help=f"policy file relative to the flake repo (default {DEFAULT_POLICY})"),
        "secrets": Param(dict, help="inline policy 'secrets:' (instead of a policy file)"),
        "notify": Param(dict, help="inline policy 'notify:'"),
        "names": Param(list, items=str, check=_check_names, help="rotate only these secrets"),
        "due": Param(bool, default=True, help="only secrets past max_age (or never rotated)"),
        "force": Param(bool, default=False, help="rotate the selected secrets even if not due"),
        "lock_wait": Param((int, float), default=0, help="seconds to wait for another rotation's lock"),
    }

    provided: dict[str, Secret]
    """Values a person gave for ``prompt`` secrets (``secrets set``), by name."""
    needs_person: list[str]
    """Due ``prompt`` secrets this run skipped: only a person can rotate them."""

    def provide(self, name: str, value: Secret) -> None:
        """Give the ``prompt`` secret ``name`` the value a person typed (it then rotates)."""
        self.provided[name] = value

    def __init__(self, args: dict[str, Any], source: Source, inventory: Inventory) -> None:
        super().__init__(args, source, inventory)
        self.provided = {}
        self.needs_person = []

    def validate(self) -> None:
        root = self.inventory.flake
        if self.args["secrets"] is not None:
            data = {"secrets": self.source.params["secrets"]}
            if self.args["notify"] is not None:
                data["notify"] = self.source.params["notify"]
            self.policy = parse_policy(data, self.source.file, self.inventory.names, root=root)
        else:
            path = root / (self.args["policy"] or DEFAULT_POLICY)
            if not path.exists():
                raise self.source.error(f"rotation policy {path} not found", "policy")
            self.policy = load_policy(path, self.inventory.names, root=root)
        for name in self.args["names"] or []:
            if name not in self.policy.secrets:
                raise self.source.error(
                    f"unknown secret {name!r} (policy has: {', '.join(self.policy.secrets)})", "names"
                )
        # A lock planted as a symlink or FIFO is refused now, not mid-rotation.
        for lock in [lock_path(f) for f in self.policy.files()] + [state.lock_file(self.state_file())]:
            check_lock_file(lock)
        # Parsed now (and again, fresh, when deciding): a malformed state file is
        # then exit 3 before any host is contacted, not a failure on every host.
        state.load(self.state_file())
        self._store = self._read_files(root)

    def _read_files(self, root: Path) -> SopsStore | None:
        """Decrypt the policy's existing sops files now, while the input is validated.

        A malformed or tampered file is then a SecretsFileError (exit 3) before
        any host is contacted, instead of a failure of every consumer host
        after connecting. The store keeps the plaintext cached for the plan.
        """
        files = [f for f in self.policy.files() if f.is_file()]
        if not files:
            return None
        store = SopsStore(root / "secrets")
        for f in files:
            store.read(f)
        return store

    def selected(self) -> list[SecretPolicy]:
        """The policy's secrets this invocation is about."""
        names = self.args["names"]
        return [s for n, s in self.policy.secrets.items() if not names or n in names]

    def targets(self, selected: list[Host]) -> list[Host]:
        # Secrets derived from the selected ones rotate with them: their consumers' hosts too.
        edges = {n: s.depends for n, s in self.policy.secrets.items()}
        names = deps.with_dependents([s.name for s in self.selected()], edges)
        wanted = {c.host for n in names for c in self.policy.secrets[n].consumers}
        return [h for h in selected if h.name in wanted]

    def state_file(self) -> Path:
        """The plaintext rotation state beside the secrets."""
        return state.state_path(self.policy.root / "secrets")

    def decide(self, store: SopsStore) -> list[Decision]:
        """Which secrets rotate now, and why (read-only: reads state and sops pending markers).

        A secret that rotates takes along every secret derived from it; the
        ones linked by ``from:`` become one decision (one staged rotation).
        A due ``prompt`` secret is not rotated but listed in :attr:`needs_person`.
        """
        st = state.load(self.state_file())
        self.needs_person = []
        singles: list[Decision] = []
        reasons: dict[str, tuple[str, bool]] = {}
        for spec in self.selected():
            entry = st.get(state.key("secret", spec.name))
            held = store.read(spec.file) if store.exists(spec.file) else {}
            if spec.name in self.provided:
                reasons[spec.name] = ("a new value was given", False)
            elif pending_key(spec.key) in held:
                reasons[spec.name] = ("a previous rotation was interrupted: resume", True)
            elif entry.status == "pending" and entry.phase == "promoting":
                singles.append(Decision(spec, "record a promotion interrupted by a crash", finalize=True))
            elif spec.needs_person:
                # Only a person can rotate it: named or due, say so; under --all, not due, skip quietly.
                if spec.name in (self.args["names"] or []) or entry.is_due(entry.max_age(spec.max_age)):
                    self.needs_person.append(spec.name)
            elif self.args["force"] or (self.args["names"] and not self.args["due"]):
                reasons[spec.name] = ("requested", False)
            elif entry.is_due(entry.max_age(spec.max_age)):
                age = entry.age()
                limit = entry.max_age(spec.max_age)
                why = (
                    "never rotated" if age is None else f"age {format_age(age)} ≥ max_age {format_age(limit)}"
                )
                reasons[spec.name] = (why, False)
            elif retire_key(spec.key) in held:
                singles.append(Decision(spec, "revoke the previous lease", retire_only=True))
        edges = {n: s.depends for n, s in self.policy.secrets.items()}
        finalizing = {d.secret.name for d in singles if d.finalize}
        # A prompt secret is never derived, so only a value a person gave brings one in here.
        rotating = deps.with_dependents(reasons, edges) - finalizing
        decisions = [d for d in singles if not (d.retire_only and d.secret.name in rotating)]
        for names in deps.groups(rotating, edges, list(self.policy.secrets)):
            members = [self.policy.secrets[n] for n in names]
            why = [
                f"{n}: {reasons[n][0]}" if len(names) > 1 else reasons[n][0] for n in names if n in reasons
            ]
            derived = [n for n in names if n not in reasons]
            if derived:
                why.append(f"re-derive {', '.join(derived)}")
            resume = any(reasons.get(n, ("", False))[1] for n in names)
            decisions.append(Decision(members[0], "; ".join(why), resume=resume, group=members))
        return decisions

    def plan(self, ctx: PlanContext) -> list[Change]:
        if self._store is not None:
            ctx.state.setdefault("sops", self._store)
        store = ctx.secrets()
        changes = []
        for d in self.decide(store):
            spec = d.secret
            members = d.members
            missing = sorted({c.host for m in members for c in m.consumers if c.host not in ctx.hosts})
            if missing:
                # The other secrets still rotate; this one waits for its hosts.
                ctx.fail(
                    f"{LOCAL}:{spec.name}", f"not rotated: consumer host(s) {', '.join(missing)} unreachable"
                )
                continue
            if d.finalize:
                changes.append(
                    Change(
                        f"{LOCAL}:{spec.name}",
                        self.name,
                        f"record rotation of {spec.name} ({d.reason})",
                        apply=lambda local, spec=spec: self._finalize(store, spec),
                        action="update",
                    )
                )
                continue
            if d.retire_only:
                changes.append(
                    Change(
                        f"{LOCAL}:{spec.name}",
                        self.name,
                        f"{d.reason} of {spec.name} (left by an earlier run)",
                        apply=lambda local, spec=spec: self._retire(store, spec),
                        action="update",
                    )
                )
                continue
            steps = [
                f"generate {m.name} ({m.generator}"
                + (f" from {', '.join(m.depends)}" if m.depends else "")
                + f") and store as pending in {store.display(m.file)}"
                for m in members
            ]
            if d.resume:
                steps = [f"resume the pending value(s) in {store.display(spec.file)}"]
            for c in (c for m in members for c in m.consumers):
                how = []
                if c.file:
                    how.append(f"file {c.file.path} ({c.file.mode:04o} {c.file.owner}:{c.file.group})")
                if c.command:
                    how.append(f"stdin of `{c.command.run}`")
                steps.append(
                    f"deliver to {c.host}: {', '.join(how)}"
                    + (f"; reload: {'; '.join(c.reload)}" if c.reload else "")
                )
                if c.verify:
                    steps.append(f"verify on {c.host}")
            steps.append("promote: current ← new, previous ← old (rollback to current if any verify fails)")
            if any(generators.get(m.generator).retire for m in members):
                steps.append("revoke the previous lease")
            diff = "\n".join(f"  {i}. {s}" for i, s in enumerate(steps, 1))
            rotator_hosts = ctx.hosts
            changes.append(
                Change(
                    f"{LOCAL}:{spec.name}",
                    self.name,
                    f"rotate {' + '.join(m.name for m in members)} ({d.reason})",
                    apply=lambda local, group=members, hosts=rotator_hosts: self._apply(store, group, hosts),
                    diff=diff,
                    action="rotate",
                    requires=tuple(sorted({c.host for m in members for c in m.consumers})),
                )
            )
        return changes

    def _record_promoted(self, name: str) -> None:
        with state.locked(self.state_file()) as st:
            st.get(state.key("secret", name)).promoted(result="rotated (recorded after an interrupted run)")

    def _finalize(self, store: SopsStore, spec: SecretPolicy) -> None:
        """Record an interrupted promotion, then revoke the previous lease it left (if any)."""
        self._record_promoted(spec.name)
        store.invalidate(spec.file)
        if store.exists(spec.file) and retire_key(spec.key) in store.read(spec.file):
            self._retire(store, spec)

    def _rotator(self, store: SopsStore, hosts: dict[str, HostContext]) -> Rotator:
        return Rotator(
            store,
            self.state_file(),
            hosts,
            lock_wait=self.args["lock_wait"],
            specs=self.policy.secrets,
            cwd=self.policy.root,
        )

    def _apply(self, store: SopsStore, group: list[SecretPolicy], hosts: dict[str, HostContext]) -> None:
        try:
            self._rotator(store, hosts).rotate_group(group, self.provided)
        except InfratoolError as exc:
            notify(self.policy, "failure", str(exc))
            raise

    def _retire(self, store: SopsStore, spec: SecretPolicy) -> None:
        self._rotator(store, {}).retire_leftovers(spec)


def format_age(delta: timedelta | None) -> str:
    """A duration as the largest whole unit: 3d, 5h, 40s."""
    if delta is None:
        return "none"
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"
