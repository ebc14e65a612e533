"""The ``builder-key`` rotation kind: a client's builder key, rotated on the one rotation engine.

A rotation of client C's key is :mod:`infratool.rotation.engine`'s protocol
around the phases ``remote_builders.setup`` already plans:

=============== ========= ===================================================
step            where     what
=============== ========= ===================================================
begin           local     the new key (generated at plan time, shown in the
                          plan) stored as pending: ``remote-builders/C/next_ssh_key``
authorize-new   builders  authorized_keys: the new key next to the old one
install         clients   the new key file (NixOS: generated module)
revoke-old      builders  authorized_keys: only the new key
settle          local     one sops write: ``ssh_key`` ← new, pending deleted;
                          ``builder-key/C`` promoted (generation + 1, age 0)
=============== ========= ===================================================

Each phase is *marked*: a host that fails stops the rotation there, and the
next run resumes it (the pending key in sops is the key being rotated in;
every phase's changes are planned from the hosts' state, so what is done is
not redone). Why rotate: ``secrets rotate builder-key/C`` (forced, or
``--due``), or ``rotate_keys`` in the playbook, which rotates a listed
client's key when it is older than ``max_age`` (a key whose age is not
recorded counts as due once).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from infratool.changes import Change, action
from infratool.context import LocalContext
from infratool.errors import SecretsError
from infratool.rotation import state
from infratool.rotation.engine import Phase, Rotation, Unit, plan_changes
from infratool.rotation.kinds import Kind, StatusRow, register_kind
from infratool.rotation.state import RotationState, SecretState
from infratool.secrets import generators
from infratool.secrets.store import SopsStore
from infratool.tasks.configured import configured
from infratool.tasks.remote_builders.filetext import key_blob
from infratool.tasks.remote_builders.keys import KIND, ClientKey
from infratool.tasks.remote_builders.spec import SECRETS_FILE, pending_secret_key, secret_key

DEFAULT_MAX_AGE = "90d"
"""How old a builder key may get before ``rotate_keys`` / ``secrets rotate --due`` replace it."""
PHASES = ("authorize-new", "install", "revoke-old")


def due_reason(entry: SecretState, max_age: timedelta, shown: str) -> str | None:
    """Why a key with record ``entry`` is due (None: it is not)."""
    if entry.last_rotated is None:
        return "its age is not recorded"
    if entry.is_due(max_age):
        return f"it is older than {shown}"
    return None


def unit(key: ClientKey, current: ClientKey, resume: bool, entry: SecretState) -> Unit:
    """The engine's unit for rotating ``key.client``'s key from ``current`` to ``key``.

    Begin refuses the plan if sops no longer holds ``current`` as the key, or
    the pending slot is not as planned (empty, or ``key`` when resuming).
    """
    client = key.client
    return Unit(
        key=state.key(KIND, client),
        label=f"builder key of {client}",
        pending={} if resume else {pending_secret_key(client): key.private},
        expect={
            secret_key(client): current.private,
            pending_secret_key(client): key.private if resume else None,
        },
        promote={secret_key(client): key.private, pending_secret_key(client): None},
        discard={pending_secret_key(client): None},
        generation=entry.generation,
    )


def phased(
    task: str,
    secrets_dir: str,
    units: list[Unit],
    keys: dict[str, ClientKey],
    by_phase: list[list[Change]],
    nixos_clients: list[str],
    lock_wait: float | None,
) -> list[Change]:
    """The rotation as changes: begin, the three phases of ``by_phase`` with markers, settle, finish.

    A NixOS client receives its key through sops-nix from ``ssh_key``, which
    holds the new key only once settled: a change after the rotation confirms
    that and triggers the client's deploy.
    """
    shown = ", ".join(f"{u.label} ({key_blob(keys[u.key.split('/', 1)[1]].public)})" for u in units)
    resumed = not any(u.pending for u in units)
    rot = Rotation(
        kind=KIND,
        file=SECRETS_FILE,
        secrets_dir=secrets_dir,
        units=units,
        phases=[Phase(name, changes) for name, changes in zip(PHASES, by_phase, strict=True)],
        task=task,
        lock_wait=lock_wait,
        description=(
            f"{'resume rotation of' if resumed else 'rotate'} {shown}: "
            f"{'the new key is pending' if resumed else 'store the new key as pending'} in "
            f"secrets/{SECRETS_FILE}"
        ),
    )
    changes = plan_changes(rot, first_phase=1)
    last = max(c.phase for c in changes)
    for client in nixos_clients:
        public = key_blob(keys[client].public)
        changes.append(
            Change(
                rot.target,
                task,
                f"builder key of {client} is promoted in sops: deliver it (sops-nix, at the deploy)",
                op="remote_builders.promoted",
                args={"client": client, "public": public},
                deploy=client,
                phase=last + 1,
                requires=(rot.target,),
                action="update",
            )
        )
    return changes


@action("remote_builders.promoted")
def confirm_promoted(local: LocalContext, client: str, public: str) -> None:
    """Refuse to deploy ``client`` unless sops holds the rotated key as its current key."""
    values = SopsStore(local.root / "secrets").read(SECRETS_FILE, missing_ok=True)
    stored = values.get(secret_key(client))
    if stored is None or key_blob(generators.public_from_private(stored)) != public:
        raise SecretsError(f"{secret_key(client)} is not the rotated key: the rotation did not promote it")


class BuilderKeyKind(Kind):
    """Every client of every ``remote_builders.setup`` entry of the fleet's playbooks."""

    name = KIND

    def _tasks(self, inventory: Any) -> list[Any]:
        from infratool.tasks.remote_builders.setup import Setup

        return configured(inventory, Setup)

    def status(self, inventory: Any, st: RotationState, **options: Any) -> list[StatusRow]:
        """One row per client key: age (from the state file), the entry's ``max_age``, due."""
        rows = []
        for task in self._tasks(inventory):
            builders = [b.name for b in task.topology.builders]
            for client in task.topology.clients:
                entry = st.rotations.get(state.key(KIND, client.name)) or SecretState()
                rows.append(
                    StatusRow.of(
                        KIND,
                        client.name,
                        entry,
                        max_age=task.max_age,
                        due=due_reason(entry, task.max_age, task.args["max_age"]) is not None,
                        targets=[client.name, *builders],
                        file=f"secrets/{SECRETS_FILE}",
                        configured=task.source,
                    )
                )
        return rows

    def rotate_task(
        self,
        inventory: Any,
        names: list[str] | None,
        *,
        due: bool,
        force: bool,
        lock_wait: float,
        **options: Any,
    ) -> Any | None:
        """The playbook entry managing ``names`` (first match), set to rotate them now or when due."""
        for task in self._tasks(inventory):
            clients = [c.name for c in task.topology.clients]
            wanted = clients if names is None else [n for n in names if n in clients]
            if wanted:
                task.request_rotation(wanted, when_due=due and not force, lock_wait=lock_wait)
                return task
        return None


register_kind(BuilderKeyKind())
