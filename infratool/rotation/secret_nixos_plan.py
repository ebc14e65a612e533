"""Planning the ``secret`` kind's NixOS consumers: the write, deploy, commit and rollback changes.

:mod:`.secret_nixos` describes the protocol and carries the changes out;
this module adds them to the rotation :mod:`.secret_plan` builds for one
sops file (:func:`attach`), and gives the planner its view of a value an
interrupted run already wrote (:func:`effective_held`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from infratool.changes import Change
from infratool.deploy.engine import DEFAULT_CONFIRM_TIMEOUT
from infratool.rotation import engine, sopsnix
from infratool.rotation.policy import Policy, SecretPolicy
from infratool.rotation.secret import pending_key, previous_key
from infratool.rotation.secret_nixos import (
    ACTIVATE_OP,
    COMMIT_OP,
    RESTORE_OP,
    ROLLBACK_OP,
    VERIFY_RETRY,
    WRITE_OP,
)
from infratool.secrets.secret import Secret

_ROLLBACK_KEYS = ("unit", "secret", "first", "verify")


def _same(a: Secret | None, b: Secret | None) -> bool:
    return a is not None and b is not None and a.reveal_bytes() == b.reveal_bytes()


def written(held: Mapping[str, Secret], key: str) -> bool:
    """Whether an interrupted rotation already wrote its pending value as ``key``'s value (step 2)."""
    return _same(held.get(key), held.get(pending_key(key))) and previous_key(key) in held


def effective_held(held: Mapping[str, Secret], specs: list[SecretPolicy]) -> dict[str, Secret]:
    """``held`` as the planner must see it: a value already written (step 2) is not yet current.

    After a crash between the write and the promotion, the sops file holds
    the pending value as the secret's value and the old one as previous; the
    planner then rolls back to, verifies against and promotes over that old
    value.
    """
    out = dict(held)
    for spec in specs:
        if written(held, spec.key):
            out[spec.key] = held[previous_key(spec.key)]
    return out


def confirm_timeout(base: int, hosts: int, verifies: int) -> int:
    """The watchdog's confirm timeout, sized from the plan.

    It counts from the end of a host's activation until the commit step: the
    other hosts' activations (in parallel, one shared build), the verify
    phase (each verify, and the retry window of one still failing) and the
    commit's new connection, on top of the ``base`` a deploy gets
    (``--confirm-timeout``).
    """
    return int(base + VERIFY_RETRY + 5 * verifies + 10 * (hosts - 1))


def plan_phases(
    *,
    policy: Policy,
    flake: str,
    file: str,
    secrets_dir: str,
    task: str,
    target: str,
    hosts: list[dict[str, Any]],
    units: list[engine.Unit],
    members: Mapping[str, list[SecretPolicy]],
    new: Mapping[str, Mapping[str, Secret]],
    raw_held: Mapping[str, Secret],
    held: Mapping[str, Secret],
    confirm_base: int = DEFAULT_CONFIRM_TIMEOUT,
) -> dict[str, list[Change]]:
    """The NixOS changes of one rotation, by engine phase (``write``, ``deliver``, ``commit``, ...).

    ``hosts``: per NixOS consumer host, ``{"host", "units", "names", "verify", "rollback"}``.
    ``new``: unit key → secret name → the value it rotates to. Adds, to each
    unit with a NixOS consumer, the restore of its old value to ``discard``.
    """
    nix_hosts = [h["host"] for h in hosts]
    update: dict[str, Secret | None] = {}
    restore: dict[str, dict[str, Secret | None]] = {}
    for unit in units:
        for spec in members[unit.key]:
            if not any(c.host in nix_hosts for c in spec.consumers):
                continue
            old = held.get(spec.key)
            update[spec.key] = new[unit.key][spec.name]
            back: dict[str, Secret | None] = {spec.key: old}
            if old is not None:
                update[previous_key(spec.key)] = old
            if not written(raw_held, spec.key):
                back[previous_key(spec.key)] = raw_held.get(previous_key(spec.key))
            restore.setdefault(unit.key, {}).update(back)
            unit.discard.update(back)
    # Every secret of the policy that a host consumes: its module names them all.
    modules = {h: sopsnix.entries(flake, h, list(policy.secrets.values())) for h in nix_hosts}
    timeout = confirm_timeout(confirm_base, len(nix_hosts), sum(len(h["verify"]) for h in hosts))
    batch = {"id": uuid.uuid4().hex, "hosts": nix_hosts}
    checks = {u.key: list(u.checks) for u in units}
    common = {"secrets_dir": secrets_dir, "flake": flake, "confirm_timeout": timeout}
    names = ", ".join(dict.fromkeys(n for h in hosts for n in h["names"]))
    out: dict[str, list[Change]] = {"write": [], "deliver": [], "commit": [], "restore": [], "rollback": []}
    out["write"].append(
        Change(
            target,
            task,
            f"write {names} as the value sops-nix installs (previous kept); generate "
            + ", ".join(f"hosts/{h}/generated/{sopsnix.MODULE}" for h in nix_hosts),
            op=WRITE_OP,
            args={**common, "file": file, "update": update, "modules": modules},
            action="update",
            diff="\n".join(f"~ {k}" for k in update),
        )
    )
    out["restore"].append(
        Change(
            target,
            task,
            f"if a check failed: write the previous {names} back into the sops file",
            op=RESTORE_OP,
            args={**common, "file": file, "restore": restore, "modules": modules},
            action="update",
        )
    )
    for h in hosts:
        host_common = {**common, "units": h["units"]}
        what = ", ".join(h["names"])
        out["deliver"].append(
            Change(
                h["host"],
                task,
                f"deploy {h['host']} (sops-nix installs {what}): build, copy, "
                f"switch-to-configuration test (confirm within {timeout}s)",
                op=ACTIVATE_OP,
                args={**host_common, "batch": batch},
                action="deploy",
            )
        )
        out["commit"].append(
            Change(
                h["host"],
                task,
                f"commit {h['host']}'s generation (boot) if {what} verified everywhere, else roll it back",
                op=COMMIT_OP,
                args={**host_common, "checks": {u: checks[u] for u in h["units"]}},
                action="deploy",
            )
        )
        out["rollback"].append(
            Change(
                h["host"],
                task,
                f"if a check failed: {h['host']} back on the previous {what} (previous generation or a redeploy)",
                op=ROLLBACK_OP,
                args={**host_common, "items": h["rollback"]},
                action="update",
            )
        )
    return out


def host_entry(
    host: str, unit_keys: list[str], d_items: list[dict], v_items: list[dict], r_items: list[dict]
) -> dict:
    """What :func:`plan_phases` needs of one NixOS consumer host (no file goes over SSH there)."""
    return {
        "host": host,
        "units": unit_keys,
        "names": list(dict.fromkeys(i["secret"] for i in d_items)),
        "verify": v_items,
        # What a rollback checks there: the previous values' verify.
        "rollback": [{k: v for k, v in i.items() if k in _ROLLBACK_KEYS} for i in r_items],
    }


def attach(
    phases: list[engine.Phase],
    rollbacks: list[engine.Phase],
    verify: list[Change],
    **kwargs: Any,
) -> tuple[list[engine.Phase], list[engine.Phase]]:
    """The rotation's phases with the NixOS changes added (``kwargs``: :func:`plan_phases`'s).

    ``write`` comes first, the NixOS activations join ``deliver``, ``commit``
    follows ``verify``; ``restore`` is the first rollback phase, the NixOS
    rollbacks join ``rollback``. Every verify retries while units sops-nix
    restarted come up.
    """
    nix = plan_phases(**kwargs)
    by_name = {p.name: p for p in [*phases, *rollbacks]}
    by_name["deliver"].changes += nix["deliver"]
    by_name["rollback"].changes += nix["rollback"]
    for c in verify:
        c.args["retry_for"] = VERIFY_RETRY
    return (
        [
            engine.Phase("write", nix["write"], checked=True),
            *phases,
            engine.Phase("commit", nix["commit"], checked=True),
        ],
        [engine.Phase("restore", nix["restore"], checked=True), *rollbacks],
    )
