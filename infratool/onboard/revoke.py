"""Revocation when a host leaves (``host remove``) or is reinstalled (``host add --replace``).

``sops updatekeys`` drops a recipient but keeps each file's **data key**: a
host that once decrypted a file (or kept the data key from memory, a core
dump, its disk) still opens the new ciphertext. And a value the host held or
could read may have left with it. So, for the host's age recipient(s):

1. every sops file listing one of them gets a **new data key** without them
   (``sops rotate --rm-age``), one file at a time, each renamed into place:
   a crash leaves every file either done or as it was, and the next run
   finds the ones left by their metadata;
2. a **rotation plan** lists every secret of the rotation policy whose value
   the host held (a consumer on it) or could read (its sops file was
   readable by the host), each with the reason, plus the keys of readable
   files that the policy does not rotate (to change by hand).

``--rotate`` then runs that plan as an ordinary staged rotation
(:func:`rotation_policy_data` gives the policy without the departed host's
consumers: there is nobody left there to deliver to).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.faults import fault_point
from infratool.onboard.sopsrules import COMMON_REGEX, host_regex, sops_files


@dataclass(frozen=True)
class PlannedRotation:
    """One secret the departed host could know, and why."""

    secret: str
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (names and reasons only)."""
        return {"secret": self.secret, "reasons": list(self.reasons)}


@dataclass
class Revocation:
    """What revoking a host did (data keys) and what it plans (rotations)."""

    data_keys: list[Path] = field(default_factory=list)
    """Files whose data key was rotated now."""
    readable: list[Path] = field(default_factory=list)
    """Every sops file the host could read (rotated now, or by an earlier interrupted run)."""
    plan: list[PlannedRotation] = field(default_factory=list)
    unmanaged: dict[str, list[str]] = field(default_factory=dict)
    """Readable file (as shown) → its keys that the rotation policy does not rotate."""
    policy_note: str | None = None
    """Why the plan could not read the rotation policy, if it could not."""

    def to_dict(self, shown: Any) -> dict[str, Any]:
        """JSON-friendly form; ``shown(path)`` renders a path as the operator knows it."""
        return {
            "data_keys_rotated": [shown(p) for p in self.data_keys],
            "readable": [shown(p) for p in self.readable],
            "rotation_plan": [p.to_dict() for p in self.plan],
            "not_in_policy": self.unmanaged,
            "policy_note": self.policy_note,
        }


def could_read(store: Any, name: str, recipients: Sequence[str]) -> list[Path]:
    """Sops files host ``name`` could decrypt: its recipient in the metadata, or a file of its rules.

    The rule names (``<host>.yaml``, ``common.yaml``) count even when the
    metadata no longer lists the host: an earlier, interrupted run may have
    rotated that file already, and its values are still ones the host read.
    """
    found = []
    for path in sops_files(store.repo):
        rel = path.relative_to(store.repo).as_posix()
        by_rule = re.search(host_regex(name), rel) or re.search(COMMON_REGEX, rel)
        if by_rule or set(recipients) & set(store.recipients(path)):
            found.append(path)
    return found


def rotate_data_keys(store: Any, files: Sequence[Path], recipients: Sequence[str]) -> list[Path]:
    """New data key, without ``recipients``, for every file of ``files`` that still lists one."""
    done = []
    for path in files:
        if set(recipients) & set(store.recipients(path)):
            store.rotate_data_key(path, tuple(r for r in recipients if r in store.recipients(path)))
            done.append(path)
            fault_point("data-key-rotated")  # chaos tests: killed between two files
    return done


def _load_policy(policy: Path) -> dict[str, Any] | None:
    if not policy.is_file():
        return None
    data = yamlsrc.load(policy)
    return data if isinstance(data, dict) and isinstance(data.get("secrets"), dict) else None


def plan_rotations(store: Any, policy: Path, name: str, readable: Sequence[Path]) -> Revocation:
    """The secrets to rotate because host ``name`` held or could read them (names, never values).

    ``policy`` is ``<repo>/secrets/rotation.yaml``; its ``file:`` paths are relative to ``<repo>``.
    """
    out = Revocation(readable=list(readable))
    try:
        data = _load_policy(policy)
    except InputError as exc:
        data = None
        out.policy_note = f"the rotation policy cannot be read ({exc}): plan from the sops files only"
    root = policy.parent.parent  # the policy sits in <repo>/secrets/
    in_policy: dict[Path, set[str]] = {}
    for secret, spec in (data or {}).get("secrets", {}).items():
        if not isinstance(spec, dict):
            continue
        reasons = []
        consumers = spec.get("consumers") or []
        if any(isinstance(c, dict) and c.get("host") == name for c in consumers):
            reasons.append(f"{name} held its value (a consumer there)")
        file = (root / str(spec.get("file", ""))).resolve() if spec.get("file") else None
        if file is not None:
            in_policy.setdefault(file, set()).add(str(secret))
            if file in {p.resolve() for p in readable}:
                reasons.append(f"{name} could decrypt {store.repo.name}/{store.display(file)}")
        if reasons:
            out.plan.append(PlannedRotation(str(secret), tuple(reasons)))
    for path in readable:
        keys = [
            k
            for k in store.read(path)
            if not k.startswith("_rotation/") and k not in in_policy.get(path.resolve(), set())
        ]
        if keys:
            out.unmanaged[f"{store.repo.name}/{store.display(path)}"] = keys
    return out


def rotation_policy_data(policy: Path, without_host: str | None) -> dict[str, Any]:
    """The policy mapping (line numbers kept), minus ``without_host``'s consumers."""
    data = _load_policy(policy)
    if data is None:
        raise InputError("--rotate needs a rotation policy with 'secrets:'", file=policy)
    if without_host is None:
        return data
    for spec in data["secrets"].values():
        if isinstance(spec, dict) and isinstance(spec.get("consumers"), list):
            spec["consumers"] = [
                c for c in spec["consumers"] if not (isinstance(c, dict) and c.get("host") == without_host)
            ]
    return data
