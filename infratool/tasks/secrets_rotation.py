"""``secrets_rotation.rotate``: staged, verified, crash-safe rotation of sops secrets.

The ``secret`` kind of the one rotation engine (:mod:`infratool.rotation.engine`).
This module decides *what* rotates (due, named, resumed, a promotion to
record, a lease to revoke) and registers the kind (:class:`SecretKind`);
:mod:`infratool.rotation.secret_plan` plans it and
:mod:`infratool.rotation.secret` carries it out. The protocol, after AWS
Secrets Manager's createSecret → setSecret → testSecret → finishSecret, per
sops file, under its lock:

1. **generate** the new values — at plan time, carried in the plan as
   :class:`~infratool.secrets.secret.Secret`;
2. **store them as pending** (one sops write, ``_rotation/pending/<name>``)
   *before* any consumer sees them;
3. **deliver** to every consumer host (one change per host: files, command
   stdin, reloads), then **verify** there (one change per host);
4. **promote** what verified (one sops write: current ← new,
   ``_rotation/previous/<name>`` ← old), record it in the state file;
5. a secret whose delivery or verify failed **rolls back** on every
   consumer, its pending value is discarded, exit 1.

Consumers on ``os: nixos`` hosts get the value through sops-nix instead
(:mod:`infratool.rotation.secret_nixos`): the value is written into the sops
file, the host is deployed with ``switch-to-configuration test``, verified,
then committed (``boot``). The task also keeps each NixOS consumer host's
generated ``sops.secrets`` module (:mod:`infratool.rotation.sopsnix`) in step
with the policy when nothing rotates there.

A crash (kill -9) at any point is recovered by the next run: no pending
value → start afresh; a pending value → resume from delivery; state
"promoting" without a pending value → only record the promotion.

Fault injection for the chaos tests: ``INFRATOOL_FAULT=<step>`` kills the
process with SIGKILL right after that step (``generated``, ``stored``,
``delivered-one``, ``delivered``, ``verified``, ``promoting`` — the state file
says "promoting", sops not yet written — and ``promoted``), or of a rollback
(``rolled-back-one``, ``rolled-back``, ``discarded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infratool.changes import LOCAL, Change
from infratool.errors import InfratoolError, InputError
from infratool.inventory import Host, Inventory
from infratool.rotation import engine, secret, secret_plan, sopsnix, state
from infratool.rotation.kinds import Kind, StatusRow, format_age, register_kind
from infratool.rotation.lock import check_lock_file, lock_path
from infratool.rotation.notify import notify
from infratool.rotation.policy import Policy, SecretPolicy, load_policy, parse_policy
from infratool.rotation.secret import pending_key, retire_key
from infratool.secrets import deps
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Source, Task, register
from infratool.tasks.lib.local import local_file_change

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
    rotates = True
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
        self.issued: list[dict[str, Any]] = []

    def abandon(self) -> None:
        """The plan will not be applied (dry run, not confirmed): return the leases it issued."""
        secret.return_leases(self.issued)
        self.issued = []

    def validate(self) -> None:
        root = self.inventory.flake
        if self.args["secrets"] is not None:
            data = {"secrets": self.source.params["secrets"]}
            if self.args["notify"] is not None:
                data["notify"] = self.source.params["notify"]
            self.policy = parse_policy(
                data, self.source.file, self.inventory.names, root=root, line=self.source.line
            )
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
            entry = st.get(secret.state_key(spec.name))
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
        """Per sops file, one engine rotation: begin, per-host deliver/verify, settle, rollback, finish."""
        if self._store is not None:
            ctx.state.setdefault("sops", self._store)
        store = ctx.secrets()
        engine.use_store(store)  # the actions reuse this run's store (and its cached plaintext)
        secrets_dir = str(self.policy.root / "secrets")
        st = state.load(self.state_file())
        changes: list[Change] = []
        by_file: dict[Path, list[secret.Group]] = {}
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
            if d.finalize or d.retire_only:
                changes.append(self._single(d, secrets_dir))
                continue
            by_file.setdefault(spec.file, []).append(secret.Group(members, d.reason))
        nixos = {h.name for h in self.inventory if h.is_nixos}
        rotating = {c.host for gs in by_file.values() for g in gs for m in g.members for c in m.consumers}
        # A NixOS consumer host that no rotation of this run deploys still gets its module
        # brought up to date with the policy (a consumer added, units changed), and a deploy.
        for host in sorted((nixos & set(ctx.hosts)) - rotating):
            changes += self._module_change(ctx, store, host)
        for file, groups in by_file.items():
            held = store.read(file, missing_ok=True)
            try:
                rot = secret_plan.build(
                    self.policy, str(file), secrets_dir, groups, held, self.provided, st, self.name,
                    self.args["lock_wait"], self.issued,
                    nixos=nixos, flake=str(self.inventory.flake.resolve()),
                    confirm_base=ctx.options.confirm_timeout,
                )  # fmt: skip
            except InfratoolError as exc:
                # Nothing is stored at plan time: the file's secrets wait for the next run.
                for g in groups:
                    ctx.fail(f"{LOCAL}:{g.label}", f"rotation of {g.label} failed: {exc}")
                notify(self.policy, "failure", str(exc))
                continue
            changes += engine.plan_changes(rot)
        return changes

    def _module_change(self, ctx: PlanContext, store: SopsStore, host: str) -> list[Change]:
        """The host's generated sops-nix module, if the policy's entries for it changed (deployed)."""
        flake = self.inventory.flake.resolve()
        items = sopsnix.entries(flake, host, list(self.policy.secrets.values()))
        present = {it["file"]: set(store.read(Path(it["file"]), missing_ok=True)) for it in items}
        if not items and not sopsnix.module_path(flake, host).exists():
            return []
        rel = str(sopsnix.module_path(flake, host).relative_to(flake))
        return local_file_change(ctx.local, self.name, rel, sopsnix.module_text(items, present), deploy=host)

    def _single(self, d: Decision, secrets_dir: str) -> Change:
        """A local-only change: record an interrupted promotion, or revoke a leftover lease."""
        spec = d.secret
        retire = {
            "name": spec.name,
            "key": spec.key,
            "generator": spec.generator,
            "params": dict(spec.params),
        }
        if d.finalize:
            return Change(
                f"{LOCAL}:{spec.name}",
                self.name,
                f"record rotation of {spec.name} ({d.reason})",
                op="rotation.secret.finalize",
                args={"secrets_dir": secrets_dir, "file": str(spec.file), "name": spec.name, "spec": retire},
                action="update",
            )
        return Change(
            f"{LOCAL}:{spec.name}",
            self.name,
            f"{d.reason} of {spec.name} (left by an earlier run)",
            op="rotation.secret.retire",
            args={
                "secrets_dir": secrets_dir,
                "file": str(spec.file),
                "lock_wait": self.args["lock_wait"],
                "spec": retire,
            },
            action="update",
        )


class SecretKind(Kind):
    """The ``secret`` kind: the secrets of the rotation policy (``secrets/rotation.yaml``)."""

    name = secret.KIND

    def _policy(self, inventory: Inventory, policy: str | None) -> Policy | None:
        path = inventory.flake / (policy or DEFAULT_POLICY)
        if not path.exists():
            if policy:
                raise InputError(f"rotation policy {path} not found (see docs/secrets-rotation.md)")
            return None  # a fleet without a policy has no secret rotations
        return load_policy(path, inventory.names, root=inventory.flake.resolve())

    def status(self, inventory: Inventory, state: state.RotationState, **options: Any) -> list[StatusRow]:
        pol = self._policy(inventory, options.get("policy"))
        if pol is None:
            return []
        rows = []
        for name, spec in pol.secrets.items():
            entry = state.get(secret.state_key(name))
            max_age = entry.max_age(spec.max_age)
            file = spec.file.relative_to(pol.root) if spec.file.is_absolute() else spec.file
            rows.append(
                StatusRow(
                    kind=self.name,
                    name=name,
                    age=entry.age(),
                    max_age=max_age,
                    due=entry.is_due(max_age),
                    status=entry.status,
                    targets=sorted({c.host for c in spec.consumers}),
                    phase=entry.phase,
                    generation=entry.generation,
                    last_result=entry.last_result,
                    last_error=entry.last_error,
                    needs_person=spec.needs_person,
                    extra={"file": str(file), "generator": spec.generator},
                )
            )
        return rows

    def rotate_task(
        self,
        inventory: Inventory,
        names: list[str] | None,
        *,
        due: bool,
        force: bool,
        lock_wait: float,
        **options: Any,
    ) -> RotateSecrets | None:
        policy = options.get("policy")
        if self._policy(inventory, policy) is None:
            return None
        args = {
            "policy": policy or DEFAULT_POLICY,
            "secrets": None,
            "notify": None,
            "names": names,
            "due": due,
            "force": force,
            "lock_wait": lock_wait,
        }
        source = Source(file=inventory.flake / (policy or DEFAULT_POLICY), line=None, params={})
        return RotateSecrets(args, source, inventory)


register_kind(SecretKind())


__all__ = ["DEFAULT_POLICY", "NEEDS_PERSON", "RotateSecrets", "SecretKind", "format_age"]
