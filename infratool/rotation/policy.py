"""Rotation policy: which secrets exist, how they are made, how old they may get, who uses them.

The policy is YAML (``secrets/rotation.yaml``), or the same mapping given as a
playbook task's ``with:`` params. It is validated in full before anything
runs; every mistake is an :class:`InputError` pointing at ``file:line``.

.. code-block:: yaml

    notify:                                  # optional; at least one of command/url
      command: "ntfy-send infra"             # run locally, the message on stdin
      url: "https://ntfy.sh/my-topic"        # HTTP POST of the message
      events: [failure, due, drift]          # default: all three

    git:                                     # optional; when the repo is a git repository
      commit: true                           # commit sops files + state after a rotation (default)
      push: false                            # push to the branch's upstream (default false)
      author: "infratool <infra@example.org>"  # default: git's own user.name/user.email

    secrets:
      postgres/app:                          # name = sops key path a/b/c
        file: secrets/db.yaml                # sops file (.yaml/.yml), relative to the repo root
        generator: password                  # a name from generators.GENERATORS
        params: {length: 40}                 # that generator's params (checked here)
        max_age: 90d                         # <n><s|m|h|d|w>..., e.g. 12h, 90d, 1w3d; optional
        consumers:                           # optional; each needs `file` and/or `command`
          - host: brix                       # a host of the inventory
            part: value                      # value (default) | public (key pairs only)
            file:                            # deliver as a file (atomic, 0600 temp + rename)
              path: /var/lib/app/db-password # absolute
              mode: "0600"                   # quoted octal; default "0600"
              owner: root                    # default root
              group: root                    # default: the owner
            command: "psql -v ON_ERROR_STOP=1 -f -"   # or {run: ..., stdin: ...}
            stdin_template: "ALTER ROLE app PASSWORD '{value}';"
            reload: ["systemctl reload app"] # str or list; run after delivery
            units: [app.service]             # os: nixos hosts: sops-nix's restartUnits
            verify: "psql-check"             # str or {run: ..., stdin: ...}; must exit 0
      web/htpasswd:                          # a derived secret (see docs/secret-sources.md)
        file: secrets/db.yaml                # the same sops file as its sources
        generator: derive
        from: postgres/app                   # a name or a list; rotates with its sources
        params: {function: htpasswd, user: admin}

A command is fed its secret on **stdin**, never in argv: by default the bare
value (or public part, with ``part: public``); a ``stdin`` template (for
``command`` also spelled ``stdin_template`` beside it) renders ``{value}`` and
``{public}`` into the text sent, e.g. an SQL statement. Other braces are
literal, but ``{word}`` with an unknown word is refused as a likely typo.

The repo root (base of relative ``file`` paths) is the ``root`` argument, or
else the nearest directory at or above the policy file holding
``hosts.yaml``, ``flake.nix`` or ``.git``, or else the policy's directory.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.secrets import generators
from infratool.secrets.secret import Secret

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)([smhdw])")
_NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PLACEHOLDERS = ("value", "public")
_ROOT_MARKERS = ("hosts.yaml", "flake.nix", ".git")
# Top-level keys of a sops file that are not the policy's: ``sops`` is the
# file's metadata, ``_rotation`` holds pending/previous values
# (rotation/engine.py). A secret named ``_rotation/pending/foo`` would be
# read as foo's pending value and corrupt foo's rotation.
RESERVED_NAMES = ("_rotation", "sops")
# A user or group name as useradd(8) and NixOS accept it, or a numeric id:
# the value reaches a shell on the host (chown), so nothing else gets through.
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")
NOTIFY_EVENTS = ("failure", "due", "drift")
_AUTHOR = re.compile(r"[^<>\n]+ <[^<>\s]+>")
Part = Literal["value", "public"]


def parse_duration(text: str) -> timedelta:
    """``90d`` / ``12h`` / ``1w3d`` -> timedelta; :class:`InputError` if malformed or zero."""
    if not isinstance(text, str):
        raise InputError(f"a duration needs a unit (s, m, h, d, w), e.g. '90d'; got {text!r}")
    compact = text.strip()
    matches = list(_DURATION.finditer(compact))
    if not compact or "".join(m.group(0) for m in matches) != compact:
        raise InputError(f"malformed duration {text!r}: use <number><s|m|h|d|w>, e.g. 90d or 1w3d")
    seconds = sum(int(m.group(1)) * _UNITS[m.group(2)] for m in matches)
    if seconds <= 0:
        raise InputError(f"duration {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def render_template(template: str, value: Secret | None, public: str | None) -> Secret:
    """``template`` with ``{value}`` / ``{public}`` filled in, as a :class:`Secret` (one pass)."""
    raw = value.reveal() if value is not None else None
    if isinstance(raw, bytes):
        raw = raw.decode()

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "value":
            if raw is None:
                raise InputError("template uses {value} but there is no value")
            return raw
        if name == "public":
            if public is None:
                raise InputError("template uses {public} but the secret has no public part")
            return public
        return m.group(0)

    return Secret(_PLACEHOLDER.sub(fill, template))


@dataclass(frozen=True)
class Command:
    """A command run on the consumer host, fed ``stdin`` (a template) on standard input."""

    run: str
    stdin: str = "{value}"

    def render_stdin(self, value: Secret | None, public: str | None = None) -> Secret:
        """The bytes for this command's stdin, as a :class:`Secret`."""
        return render_template(self.stdin, value, public)


@dataclass(frozen=True)
class FileTarget:
    """Deliver the secret as a file with this mode and ownership."""

    path: str
    mode: int = 0o600
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class Consumer:
    """One host's use of a secret: how it is delivered, reloaded and verified."""

    host: str
    part: Part = "value"
    file: FileTarget | None = None
    command: Command | None = None
    reload: tuple[str, ...] = ()
    verify: Command | None = None
    line: int | None = None
    units: tuple[str, ...] = ()
    """On an ``os: nixos`` host: the units sops-nix restarts when the value changes (``restartUnits``)."""


@dataclass(frozen=True)
class SecretPolicy:
    """How one secret (a sops key path in one sops file) is generated, aged and consumed."""

    name: str
    file: Path
    generator: str
    params: dict[str, Any]
    max_age: timedelta | None
    consumers: tuple[Consumer, ...] = ()
    line: int | None = None
    depends: tuple[str, ...] = ()
    """The secrets this one is derived from (``from:``), in policy order."""

    @property
    def needs_person(self) -> bool:
        """Whether only a person can give this secret a new value (``prompt``)."""
        return generators.GENERATORS[self.generator].needs_person

    @property
    def key(self) -> str:
        """The sops key path (``a/b/c``) of this secret: its name."""
        return self.name

    @property
    def has_public(self) -> bool:
        """Whether the generator makes a public part (key pairs)."""
        return generators.GENERATORS[self.generator].public is not None


@dataclass(frozen=True)
class Notify:
    """Where to report failures and due secrets."""

    command: str | None = None
    url: str | None = None
    events: tuple[str, ...] = NOTIFY_EVENTS


@dataclass(frozen=True)
class GitPolicy:
    """What a rotation does in a fleet repo that is a git repository (rotation/git.py)."""

    commit: bool = True
    push: bool = False
    author: str | None = None
    """``Name <email>``; None: git's own ``user.name`` / ``user.email``."""


@dataclass(frozen=True)
class Policy:
    """A validated rotation policy."""

    path: Path
    root: Path
    secrets: dict[str, SecretPolicy]
    notify: Notify | None = None
    git: GitPolicy = GitPolicy()

    def files(self) -> list[Path]:
        """Every sops file the policy touches, in first-use order."""
        seen: list[Path] = []
        for s in self.secrets.values():
            if s.file not in seen:
                seen.append(s.file)
        return seen


def find_root(policy_path: str | Path) -> Path:
    """The repo root for a policy file (see the module docstring)."""
    start = Path(policy_path).resolve().parent
    for d in (start, *start.parents):
        if any((d / m).exists() for m in _ROOT_MARKERS):
            return d
    return start


def parse_policy(
    data: Any,
    path: str | Path = "<policy>",
    host_names: Collection[str] | None = None,
    root: str | Path | None = None,
    line: int | None = None,
) -> Policy:
    """Validate a policy mapping (from YAML or playbook params) into a :class:`Policy`.

    ``host_names``: the inventory's hosts (``None`` skips that check);
    ``root``: base of relative ``file`` paths (default: ``path``'s directory);
    ``line``: where the mapping was written (a playbook task), for errors on
    values that have no line of their own.
    """
    from infratool.rotation.policy_check import (
        _check_conflicts,
        _check_dependencies,
        _Ctx,
        _git,
        _notify,
        _secret,
    )

    ctx = _Ctx(path, line)
    base = Path(root) if root is not None else Path(path).resolve().parent
    if not isinstance(data, dict):
        # A scalar or empty document has no line of its own: point at the top.
        raise InputError(
            "a rotation policy must be a mapping with a 'secrets' key",
            file=ctx.path,
            line=yamlsrc.line_of(data) or 1,
        )
    ctx.keys(data, ("notify", "secrets", "git"), "the policy")
    notify = _notify(ctx, data["notify"], data) if data.get("notify") is not None else None
    git = _git(ctx, data["git"], data) if data.get("git") is not None else GitPolicy()
    if "secrets" not in data:
        raise ctx.err("the policy needs 'secrets'", data)
    secrets = ctx.mapping(data["secrets"] or {}, "secrets", data, "secrets")
    found = {str(n): _secret(ctx, n, raw, secrets, base, host_names) for n, raw in secrets.items()}
    _check_conflicts(ctx, found, secrets)
    _check_dependencies(ctx, found, secrets)
    return Policy(path=Path(path), root=base, secrets=found, notify=notify, git=git)


def load_policy(
    path: str | Path, host_names: Collection[str] | None = None, root: str | Path | None = None
) -> Policy:
    """Load and validate the policy file at ``path`` (root: see the module docstring)."""
    data = yamlsrc.load(path)
    return parse_policy(data, path, host_names, root if root is not None else find_root(path))


def secret_names(policy: Policy, selected: Mapping[str, Any] | Collection[str]) -> list[str]:
    """Check that every name in ``selected`` is in the policy (CLI ``secrets rotate NAME``)."""
    unknown = [n for n in selected if n not in policy.secrets]
    if unknown:
        raise InputError(
            f"unknown secret(s): {', '.join(unknown)}; the policy has: {', '.join(policy.secrets)}",
            file=policy.path,
        )
    return list(selected)
