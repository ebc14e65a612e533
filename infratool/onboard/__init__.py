"""Onboarding: start a fleet repo (``infratool init``), pin and enrol hosts (``infratool host``).

Three files change when a host joins or leaves, always in this order, so that
a crash at any point is repaired by running the same command again:

1. ``secrets/.sops.yaml`` — the host becomes a sops recipient of the files it
   should read, its age recipient derived from its SSH ed25519 host key
   exactly as ``ssh-to-age`` does (what sops-nix decrypts with on the host);
2. the sops files whose recipients no longer match their creation rule are
   re-encrypted (``sops updatekeys``) — if that fails, ``.sops.yaml`` and the
   files already done are put back;
3. ``hosts.yaml`` — the entry with its pinned ``host_key``, written last: a
   host is only in the inventory once its secrets are in place.

Which files a host reads is decided by the creation rules (see
:mod:`infratool.onboard.sopsrules`): ``secrets/<host>.yaml`` that host,
``secrets/common.yaml`` every host, anything else the operators only.
``hosts.yaml`` is edited as text so every other byte stays as it was (see
:mod:`infratool.onboard.hostsfile`). ``init`` lives in
:mod:`infratool.onboard.repo`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infratool import inventory as inv
from infratool import yamlsrc
from infratool.context import write_atomic
from infratool.errors import HostKeyError, InputError
from infratool.onboard.hostsfile import add_host_text, remove_host_text, replace_host_text
from infratool.onboard.repo import InitResult, init_repo
from infratool.onboard.revoke import Revocation, could_read, plan_rotations, rotate_data_keys
from infratool.onboard.sopsrules import (
    COMMON,
    SOPS_CONFIG_NAME,
    apply_sops_config,
    edit_sops_config,
    operator_recipients,
    parse_rules,
)
from infratool.secrets.agekeys import ed25519_public_from_ssh, ssh_ed25519_to_age_recipient

__all__ = ["HostRequest", "HostResult", "InitResult", "add_host", "init_repo", "remove_host"]

ROTATION_POLICY = "rotation.yaml"
"""The rotation policy's default name under ``secrets/`` (see :mod:`infratool.rotation.policy`)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class HostRequest:
    """What ``infratool host add`` was asked to do."""

    name: str
    address: str
    port: int | None = None
    user: str | None = None
    ssh_key: str | None = None
    os: str | None = None
    system: str | None = None
    tags: tuple[str, ...] = ()
    fingerprint: str | None = None
    host_key: str | None = None
    offline: bool = False
    replace: bool = False
    timeout: float = 10.0

    def fields(self, host_key: str) -> dict[str, Any]:
        """The hosts.yaml entry (only what was given; defaults fill in the rest)."""
        out: dict[str, Any] = {"address": self.address}
        for key in ("port", "user", "ssh_key", "os", "system"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.tags:
            out["tags"] = list(self.tags)
        out["host_key"] = host_key
        return out


@dataclass
class HostResult:
    """What ``host add`` / ``host remove`` did."""

    name: str
    host_key: str | None
    fingerprint: str | None
    recipient: str | None
    inventory: Path
    inventory_changed: bool
    sops_config: Path | None
    reencrypted: list[Path]
    notes: list[str] = field(default_factory=list)
    revocation: Revocation | None = None
    """Data keys rotated and rotations planned for the key that left (remove, add --replace)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (public data only: keys, fingerprints, recipients, paths)."""
        return {
            "name": self.name,
            "host_key": self.host_key,
            "fingerprint": self.fingerprint,
            "age_recipient": self.recipient,
            "inventory": str(self.inventory),
            "inventory_changed": self.inventory_changed,
            "sops_config": str(self.sops_config) if self.sops_config else None,
            "reencrypted": [str(p) for p in self.reencrypted],
            "notes": self.notes,
            "revocation": self.revocation.to_dict(str) if self.revocation else None,
        }


def _normalise_key(line: str) -> str:
    parts = line.split()
    if len(parts) < 2:
        raise InputError("--host-key must look like 'ssh-ed25519 AAAA...'")
    if "ssh-ed25519" in parts:  # also accept a known_hosts / ssh-keyscan line
        i = parts.index("ssh-ed25519")
        parts = parts[i : i + 2]
    return " ".join(parts[:2])


def _ed25519_key(line: str) -> str:
    """``--host-key`` as ``ssh-ed25519 AAAA...``; :class:`InputError` unless it is a valid one.

    Only ed25519 host keys can be enrolled: sops-nix derives the host's age
    identity from that key, and ``host add`` negotiates only that key type.
    """
    key = _normalise_key(line)
    try:
        ed25519_public_from_ssh(key)
    except InputError as exc:
        raise InputError(f"--host-key: {exc.message}") from None
    return key


def _normalise_fingerprint(text: str) -> str:
    text = text.strip()
    if not text.startswith("SHA256:"):
        raise InputError("--fingerprint must be an OpenSSH SHA256 fingerprint (SHA256:...)")
    return text.rstrip("=")


def _read_inventory(path: Path) -> tuple[str, dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("inventory not found (run `infratool init` first, or pass -i)", file=path) from None
    data = yamlsrc.loads(text, path)
    if not isinstance(data, dict) or "hosts" not in data:
        raise InputError("inventory must be a mapping with 'hosts:'", file=path, line=1)
    return text, data


def _flake_dir(path: Path, data: dict) -> Path:
    defaults = data.get("defaults") or {}
    flake = defaults.get("flake", ".") if isinstance(defaults, dict) else "."
    p = Path(os.path.expanduser(str(flake)))
    return p if p.is_absolute() else path.parent / p


def _validate(path: Path, text: str, name: str) -> inv.Host | None:
    """Inventory validation of new hosts.yaml text; the host ``name`` (None if it was removed)."""
    data = yamlsrc.loads(text, path)
    if not data.get("hosts"):
        return None  # the last host was removed: nothing to validate
    try:
        return inv.parse(data, path).hosts.get(name)
    except InputError as exc:
        raise InputError(f"the new entry for {name!r} would not be valid: {exc.message}") from None


def _consumed_by(policy: Path, host: str) -> list[str]:
    """Secrets of the rotation policy that name ``host`` as a consumer (none if it cannot be read)."""
    try:
        data = yamlsrc.load_plain(policy.read_text(), policy)
    except (OSError, InputError):
        return []
    secrets = data.get("secrets") if isinstance(data, dict) else None
    if not isinstance(secrets, dict):
        return []
    return [
        str(secret)
        for secret, spec in secrets.items()
        if isinstance(spec, dict)
        and any(isinstance(c, dict) and c.get("host") == host for c in spec.get("consumers") or [])
    ]


def _display(store: Any, path: Path) -> str:
    """A secrets file as the operator knows it: ``secrets/<file>`` (relative to the fleet repo)."""
    return f"{store.repo.name}/{store.display(path)}"


def _store(secrets_dir: Path):
    from infratool.secrets.store import SopsStore

    return SopsStore(secrets_dir)


def fingerprint_of(key_line: str) -> str:
    """OpenSSH ``SHA256:`` fingerprint of ``"type base64"`` (see :func:`infratool.remote.fingerprint`)."""
    from infratool.remote import fingerprint

    return fingerprint(key_line)


def add_host(inventory_path: Path, request: HostRequest, confirm: Callable[[str, str], bool]) -> HostResult:
    """Pin host ``request.name`` and enrol it as a sops recipient (see the module docstring).

    The key the host offers is fetched by key exchange only, then checked
    against ``request.fingerprint`` / ``request.host_key`` if given, else
    ``confirm(key_line, fingerprint)`` decides. A refused or mismatching key
    raises :class:`HostKeyError` with nothing written. With
    ``request.offline`` the host is not contacted and ``request.host_key`` is
    pinned as given (a key pre-generated for an installation).
    """
    name = request.name
    if not _NAME_RE.match(name):
        raise InputError(f"invalid host name {name!r}: use letters, digits, '-' and '_'")
    if name == COMMON:
        raise InputError(f"{COMMON!r} names the secrets every host reads; choose another host name")
    text, data = _read_inventory(inventory_path)
    hosts = data.get("hosts") or {}
    existing = hosts.get(name) if isinstance(hosts, dict) else None
    if existing is not None and not isinstance(existing, dict):
        raise InputError(
            f"host {name!r} is not a mapping", file=inventory_path, line=yamlsrc.line_of(hosts, name)
        )
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    port = request.port if request.port is not None else int(defaults.get("port", 22))
    expected = _ed25519_key(request.host_key) if request.host_key else None
    expected_fp = _normalise_fingerprint(request.fingerprint) if request.fingerprint else None
    if request.offline:
        if expected is None:
            raise InputError("--offline needs --host-key (the key to pin without contacting the host)")
        offered = expected
    else:
        from infratool.remote import offered_host_key

        offered = offered_host_key(request.address, port, request.timeout)
    fp = fingerprint_of(offered)
    if expected is not None and offered != expected:
        raise HostKeyError(
            name,
            f"{request.address}:{port} offers {fp}, not the expected {fingerprint_of(expected)} — "
            "refusing to pin it; nothing written",
        )
    if expected_fp is not None and fp.rstrip("=") != expected_fp:
        raise HostKeyError(
            name,
            f"{request.address}:{port} offers {fp}, not the expected {expected_fp} — "
            "refusing to pin it; nothing written",
        )
    pinned = existing.get("host_key") if existing else None
    pinned = _normalise_key(pinned) if isinstance(pinned, str) else None
    if existing is not None and not request.replace and pinned != offered:
        was = fingerprint_of(pinned) if pinned else "nothing inline"
        raise HostKeyError(
            name,
            f"already in {inventory_path} (pinned: {was}); the host offers {fp}. If it was "
            "reinstalled, check the new key out of band, then re-run with --replace",
        )
    for other, spec in hosts.items() if isinstance(hosts, dict) else ():
        key = spec.get("host_key") if isinstance(spec, dict) else None
        if other != name and isinstance(key, str) and _normalise_key(key) == offered:
            raise HostKeyError(
                name,
                f"offers the host key already pinned for {other} ({fp}): a cloned machine? "
                "Give it its own host keys (ssh-keygen -A after removing them) — hosts sharing "
                "a key could read each other's secrets",
            )
    if expected is None and expected_fp is None and not confirm(offered, fp):
        raise HostKeyError(name, f"host key {fp} not confirmed — nothing written")
    recipient = ssh_ed25519_to_age_recipient(offered)
    notes: list[str] = []

    fields = request.fields(offered)
    if existing is None:
        new_text = add_host_text(text, inventory_path, name, fields)
    elif request.replace:
        # Re-pinning keeps the entry's other settings (tags, os, ...) unless given again.
        kept = {k: list(v) if isinstance(v, list) else v for k, v in existing.items()}
        fields = {**kept, **fields, "host_key": offered}
        new_text = replace_host_text(text, inventory_path, name, fields)
    else:
        new_text = text
        notes.append(f"{name} was already pinned to this key: re-checked its secrets")
    host = _validate(inventory_path, new_text, name)
    if host is not None and set(host.host_keys) != {offered}:
        others = ", ".join(fingerprint_of(k) for k in host.host_keys if k != offered)
        raise InputError(
            f"{name} would also trust {others} from the inventory's known_hosts file: "
            "remove that entry first (a stale pin must not stay trusted)"
        )
    old_recipients = []
    if pinned and pinned != offered and pinned.startswith("ssh-ed25519 "):
        old_recipients.append(ssh_ed25519_to_age_recipient(pinned))

    secrets_dir = _flake_dir(inventory_path, data) / "secrets"
    config = secrets_dir / SOPS_CONFIG_NAME
    reencrypted: list[Path] = []
    revocation = None
    if config.is_file():
        store = _store(secrets_dir)
        # Computed first: a config it cannot edit is bad input before any file changes.
        new_config = edit_sops_config(config.read_text(), config, name, recipient, old_recipients)
        if old_recipients:
            # The old key may have leaked with the old disk: new data keys without it first.
            revocation = _revoke(store, secrets_dir, name, old_recipients)
        reencrypted = apply_sops_config(store, new_config)
    else:
        notes.append(f"no {config}: host pinned, no secrets enrolment")
    if new_text != text:
        write_atomic(inventory_path, new_text.encode(), inventory_path.stat().st_mode & 0o7777)
    return HostResult(
        name,
        offered,
        fp,
        recipient,
        inventory_path,
        new_text != text,
        config if config.is_file() else None,
        reencrypted,
        notes,
        revocation,
    )


def _revoke(store: Any, secrets_dir: Path, name: str, recipients: list[str]) -> Revocation:
    """Rotate the data keys of what ``recipients`` could decrypt; plan the secrets to rotate."""
    readable = could_read(store, name, recipients)
    rotated = rotate_data_keys(store, readable, recipients)
    revocation = plan_rotations(store, secrets_dir / ROTATION_POLICY, name, readable)
    revocation.data_keys = rotated
    return revocation


def remove_host(inventory_path: Path, name: str) -> HostResult:
    """Take host ``name`` out of ``.sops.yaml`` (re-encrypting without it), then out of hosts.yaml.

    Also finishes a half-done ``host add`` (a rule in ``.sops.yaml`` but no
    inventory entry). Every file the host could decrypt first gets a new data
    key without it (``sops rotate``; ``updatekeys`` alone keeps the data key),
    and the result's :class:`Revocation` plans the rotation of every secret
    the host held or could read (see :mod:`infratool.onboard.revoke`).
    """
    text, data = _read_inventory(inventory_path)
    hosts = data.get("hosts") or {}
    entry = hosts.get(name) if isinstance(hosts, dict) else None
    key = entry.get("host_key") if isinstance(entry, dict) else None
    key = _normalise_key(key) if isinstance(key, str) else None
    recipients = [ssh_ed25519_to_age_recipient(key)] if key and key.startswith("ssh-ed25519 ") else []
    secrets_dir = _flake_dir(inventory_path, data) / "secrets"
    config = secrets_dir / SOPS_CONFIG_NAME
    enrolled = False
    if config.is_file():
        rules = parse_rules(config.read_text(), config)
        enrolled = any(r.host == name for r in rules) or any(
            set(recipients) & set(r.recipients) for r in rules
        )
        if any(r.host == name for r in rules):
            # The recipient enrolled for it, even if hosts.yaml pins another key (or none).
            operators = set(operator_recipients(rules))
            own = [x for r in rules if r.host == name for x in r.recipients if x not in operators]
            recipients += [x for x in own if x not in recipients]
    if entry is None and not enrolled:
        raise InputError(f"no host {name!r} in {inventory_path} or {config}")
    reencrypted: list[Path] = []
    notes: list[str] = []
    revocation = None
    if enrolled:
        store = _store(secrets_dir)
        # Computed first: a config it cannot edit is bad input before any file changes.
        new_config = edit_sops_config(config.read_text(), config, name, None, recipients)
        # New data keys without the host first (a crash leaves it enrolled: rerun finishes).
        revocation = _revoke(store, secrets_dir, name, recipients)
        reencrypted = apply_sops_config(store, new_config)
    new_text = text
    if entry is not None:
        new_text = remove_host_text(text, inventory_path, name)
        _validate(inventory_path, new_text, name)
        write_atomic(inventory_path, new_text.encode(), inventory_path.stat().st_mode & 0o7777)
    consumed = _consumed_by(secrets_dir / ROTATION_POLICY, name)
    if consumed:
        notes.append(
            f"secrets/{ROTATION_POLICY} still names {name} as a consumer of {', '.join(consumed)}: "
            "edit it, or `infratool secrets rotate` will refuse the policy"
        )
    return HostResult(
        name,
        key,
        fingerprint_of(key) if key else None,
        recipients[0] if recipients else None,
        inventory_path,
        new_text != text,
        config if config.is_file() else None,
        reencrypted,
        notes,
        revocation,
    )
