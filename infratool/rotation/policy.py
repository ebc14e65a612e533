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

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.secrets import deps, derive, generators
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


# --- validation -----------------------------------------------------------------


class _Ctx:
    """The file being validated, for error locations."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def err(self, message: str, container: Any, key: Any = None) -> InputError:
        return InputError(message, file=self.path, line=yamlsrc.line_of(container, key))

    def mapping(self, value: Any, what: str, container: Any, key: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise self.err(f"{what} must be a mapping", container, key)
        return value

    def keys(self, data: dict[Any, Any], allowed: Collection[str], what: str) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.err(
                    f"unknown key {key!r} in {what}{hint}; allowed: {', '.join(allowed)}", data, key
                )

    def string(self, data: dict[Any, Any], key: str, what: str, required: bool = False) -> str | None:
        if key not in data or data[key] is None:
            if required:
                raise self.err(f"{what} needs {key!r}", data)
            return None
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.err(f"{what}: {key} must be a non-empty string", data, key)
        return value

    def template(self, text: str, container: Any, key: Any, what: str) -> str:
        for m in _PLACEHOLDER.finditer(text):
            if m.group(1) not in _PLACEHOLDERS:
                raise self.err(
                    f"{what}: unknown placeholder {{{m.group(1)}}} (use {{value}} or {{public}})",
                    container,
                    key,
                )
        return text

    def command(self, data: dict[Any, Any], key: str, what: str, default_stdin: str) -> Command | None:
        if key not in data or data[key] is None:
            return None
        raw = data[key]
        if isinstance(raw, str):
            if not raw.strip():
                raise self.err(f"{what}: {key} must not be empty", data, key)
            return Command(raw, default_stdin)
        spec = self.mapping(raw, f"{what}: {key}", data, key)
        self.keys(spec, ("run", "stdin"), f"{what}: {key}")
        run = self.string(spec, "run", f"{what}: {key}", required=True)
        stdin = spec.get("stdin", default_stdin)
        if not isinstance(stdin, str):
            raise self.err(f"{what}: {key}.stdin must be a string template", spec, "stdin")
        assert run is not None
        return Command(run, self.template(stdin, spec, "stdin", f"{what}: {key}"))


def parse_duration_at(ctx: _Ctx, data: dict[Any, Any], key: str) -> timedelta:
    """:func:`parse_duration` with the error located at ``data[key]``."""
    try:
        return parse_duration(data[key])
    except InputError as exc:
        raise ctx.err(exc.message, data, key) from None


def _file_target(ctx: _Ctx, raw: Any, parent: dict[Any, Any], what: str) -> FileTarget:
    spec = ctx.mapping(raw, f"{what}: file", parent, "file")
    ctx.keys(spec, ("path", "mode", "owner", "group"), f"{what}: file")
    path = ctx.string(spec, "path", f"{what}: file", required=True)
    assert path is not None
    if not path.startswith("/"):
        raise ctx.err(f"{what}: file.path must be absolute, got {path!r}", spec, "path")
    # As files.content: a '..' hides where the secret lands; a control character
    # (a newline) in a path is never meant.
    if ".." in Path(path).parts or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ctx.err(
            f"{what}: file.path must not contain '..' or control characters, got {path!r}", spec, "path"
        )
    mode = 0o600
    if "mode" in spec:
        text = spec["mode"]
        if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3,4}", text):
            raise ctx.err(
                f'{what}: file.mode must be a quoted octal string like "0600", got {text!r}',
                spec,
                "mode",
            )
        mode = int(text, 8)
        if mode > 0o7777:
            raise ctx.err(f"{what}: file.mode {text!r} is out of range", spec, "mode")
    owner = ctx.string(spec, "owner", f"{what}: file") or "root"
    group = ctx.string(spec, "group", f"{what}: file") or owner
    for key, value in (("owner", owner), ("group", group)):
        if not _ACCOUNT.fullmatch(value):
            raise ctx.err(
                f"{what}: file.{key} {value!r} is not a user/group name (letters, digits, _ . -) or id",
                spec,
                key if key in spec else "owner",
            )
    return FileTarget(path, mode, owner, group)


_CONSUMER_KEYS = ("host", "part", "file", "command", "stdin_template", "reload", "verify")


def _consumer(
    ctx: _Ctx,
    raw: Any,
    consumers: Any,
    index: int,
    secret: str,
    has_public: bool,
    host_names: Collection[str] | None,
) -> Consumer:
    what = f"secret {secret!r} consumer {index + 1}"
    data = ctx.mapping(raw, what, consumers, index)
    ctx.keys(data, _CONSUMER_KEYS, what)
    host = ctx.string(data, "host", what, required=True)
    assert host is not None
    if host_names is not None and host not in host_names:
        close = difflib.get_close_matches(host, list(host_names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.err(f"{what}: unknown host {host!r}{hint}", data, "host")
    part = data.get("part", "value")
    if part not in ("value", "public"):
        raise ctx.err(f"{what}: part must be 'value' or 'public', got {part!r}", data, "part")
    if part == "public" and not has_public:
        raise ctx.err(f"{what}: part 'public' needs a key-pair generator", data, "part")
    default_stdin = "{" + part + "}"
    file = _file_target(ctx, data["file"], data, what) if data.get("file") is not None else None
    command = ctx.command(data, "command", what, default_stdin)
    if "stdin_template" in data:
        if command is None:
            raise ctx.err(f"{what}: stdin_template needs a command", data, "stdin_template")
        tpl = ctx.string(data, "stdin_template", what, required=True)
        assert tpl is not None
        command = Command(command.run, ctx.template(tpl, data, "stdin_template", what))
    if file is None and command is None:
        raise ctx.err(f"{what}: needs 'file' and/or 'command' to deliver the secret", data)
    reload_raw = data.get("reload") or []
    if isinstance(reload_raw, str):
        reload_raw = [reload_raw]
    if not isinstance(reload_raw, list) or not all(isinstance(c, str) and c.strip() for c in reload_raw):
        raise ctx.err(f"{what}: reload must be a command or a list of commands", data, "reload")
    verify = ctx.command(data, "verify", what, default_stdin)
    return Consumer(
        host=host,
        part=part,
        file=file,
        command=command,
        reload=tuple(reload_raw),
        verify=verify,
        line=yamlsrc.line_of(consumers, index),
    )


def _secret(
    ctx: _Ctx,
    name: Any,
    raw: Any,
    secrets: dict[Any, Any],
    root: Path,
    host_names: Collection[str] | None,
) -> SecretPolicy:
    if not isinstance(name, str) or not all(_NAME_PART.fullmatch(p) for p in name.split("/")):
        raise ctx.err(
            f"secret name {name!r} must be a sops key path a/b/c of letters, digits, _ . -",
            secrets,
            name,
        )
    if name.split("/")[0] in RESERVED_NAMES:
        raise ctx.err(
            f"secret name {name!r} is reserved: {', '.join(RESERVED_NAMES)} are infratool's and "
            "sops's own keys in a secrets file",
            secrets,
            name,
        )
    what = f"secret {name!r}"
    data = ctx.mapping(raw, what, secrets, name)
    ctx.keys(data, ("file", "generator", "params", "max_age", "consumers", "from"), what)
    for required in ("file", "generator"):
        if data.get(required) is None:
            raise ctx.err(f"{what} needs {required!r}", secrets, name)
    file_text = ctx.string(data, "file", what, required=True)
    assert file_text is not None
    if not file_text.endswith((".yaml", ".yml")):
        raise ctx.err(f"{what}: file must be a sops YAML file (.yaml/.yml)", data, "file")
    file = (root / file_text).resolve()
    # The repo is what operators review; a policy must not make infratool
    # read or rewrite a sops file elsewhere (`../../etc/x.yaml`, an absolute
    # path, a symlink out of the repo: resolve() follows it before the check).
    if not file.is_relative_to(root.resolve()):
        raise ctx.err(f"{what}: file {file_text!r} is outside the repo {root}", data, "file")
    gen_name = ctx.string(data, "generator", what, required=True)
    assert gen_name is not None
    if gen_name not in generators.GENERATORS:
        close = difflib.get_close_matches(gen_name, list(generators.GENERATORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.err(
            f"{what}: unknown generator {gen_name!r}{hint}; known: {', '.join(generators.GENERATORS)}",
            data,
            "generator",
        )
    gen = generators.GENERATORS[gen_name]
    params_raw = data.get("params") or {}
    params_raw = ctx.mapping(params_raw, f"{what}: params", data, "params")
    try:
        params = gen.validate(params_raw)
    except generators.ParamError as exc:
        # Point at the bad parameter, else at `params`, else at the generator needing them.
        if exc.param in params_raw:
            where = (params_raw, exc.param)
        else:
            where = (data, "params" if "params" in data else "generator")
        raise ctx.err(f"{what}: {exc.message}", *where) from None
    depends = _from(ctx, data, what, gen, params)
    max_age = parse_duration_at(ctx, data, "max_age") if data.get("max_age") is not None else None
    consumers_raw = data.get("consumers") or []
    if not isinstance(consumers_raw, list):
        raise ctx.err(f"{what}: consumers must be a list", data, "consumers")
    consumers = tuple(
        _consumer(ctx, c, consumers_raw, i, name, gen.public is not None, host_names)
        for i, c in enumerate(consumers_raw)
    )
    return SecretPolicy(
        name=name,
        file=file,
        generator=gen_name,
        params=params,
        max_age=max_age,
        consumers=consumers,
        line=yamlsrc.line_of(secrets, name),
        depends=depends,
    )


# --- derived secrets (from:) ----------------------------------------------------

# Functions reading one source; `template` reads any number of them.
_SINGLE_SOURCE = ("public-key", "bcrypt", "argon2id", "sha512-crypt", "htpasswd")


def _from(
    ctx: _Ctx, data: dict[Any, Any], what: str, gen: generators.Generator, params: dict[str, Any]
) -> tuple[str, ...]:
    """The ``from:`` names of a secret, checked against its generator and derive params."""
    raw = data.get("from")
    if raw is None:
        if gen.derived:
            raise ctx.err(
                f"{what}: generator {gen.name!r} needs 'from' (the secret(s) it is derived from)",
                data,
                "generator",
            )
        return ()
    if not gen.derived:
        raise ctx.err(f"{what}: 'from' is only for generator: derive", data, "from")
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ctx.err(f"{what}: from must be a secret name or a list of them", data, "from")
    if len(set(names)) != len(names):
        raise ctx.err(f"{what}: from names a secret twice", data, "from")
    function = params["function"]
    p = data.get("params") or {}
    if function in _SINGLE_SOURCE and len(names) != 1:
        raise ctx.err(
            f"{what}: derive function {function!r} takes exactly one secret in 'from'", data, "from"
        )
    if function == "htpasswd" and params["user"] is None:
        raise ctx.err(
            f"{what}: derive function 'htpasswd' needs params.user", p or data, "function" if p else "params"
        )
    if function == "template":
        if params["template"] is None:
            raise ctx.err(f"{what}: derive function 'template' needs params.template", p, "function")
        for ph in derive.placeholders(params["template"]):
            if ph != "value" and ph not in names:
                raise ctx.err(
                    f"{what}: template placeholder {{{ph}}} is not in 'from' ({', '.join(names)})",
                    p,
                    "template",
                )
    return tuple(names)


def _check_dependencies(ctx: _Ctx, found: dict[str, SecretPolicy], secrets: dict[Any, Any]) -> None:
    """``from:`` names exist, share their dependant's sops file, fit its function; no cycles."""
    for spec in found.values():
        raw = secrets[spec.name]
        for dep in spec.depends:
            other = found.get(dep)
            if other is None:
                close = difflib.get_close_matches(dep, list(found), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ctx.err(f"secret {spec.name!r}: from names unknown secret {dep!r}{hint}", raw, "from")
            if other.file != spec.file:
                # One sops file means one lock and one write that promotes them together.
                raise ctx.err(
                    f"secret {spec.name!r} must be in the same sops file as {dep!r}, which it is derived from",
                    raw,
                    "file",
                )
            function = spec.params["function"]
            if function == "public-key" and not other.has_public:
                raise ctx.err(
                    f"secret {spec.name!r}: {dep!r} ({other.generator}) has no public key to derive",
                    raw,
                    "from",
                )
            if (
                function in ("bcrypt", "htpasswd")
                and (function == "bcrypt" or spec.params["hash"] == "bcrypt")
                and other.generator == "password"
                and other.params["length"] > derive.BCRYPT_MAX_BYTES
            ):
                raise ctx.err(
                    f"secret {spec.name!r}: bcrypt reads only {derive.BCRYPT_MAX_BYTES} bytes, "
                    f"but {dep!r} is {other.params['length']} long",
                    raw,
                    "from",
                )
    cycle = deps.find_cycle({s.name: s.depends for s in found.values()})
    if cycle:
        raise ctx.err(
            f"secrets derive from each other in a cycle: {' -> '.join(cycle)}", secrets[cycle[0]], "from"
        )


def _notify(ctx: _Ctx, raw: Any, parent: dict[Any, Any]) -> Notify:
    data = ctx.mapping(raw, "notify", parent, "notify")
    if True in data or "on" in data:
        # YAML 1.1 reads a bare `on:` key as the boolean true (the GitHub Actions trap).
        key = True if True in data else "on"
        raise ctx.err("notify: use 'events:' to choose events ('on' reads as true in YAML)", data, key)
    ctx.keys(data, ("command", "url", "events"), "notify")
    command = ctx.string(data, "command", "notify")
    url = ctx.string(data, "url", "notify")
    if command is None and url is None:
        raise ctx.err("notify needs a command and/or a url", parent, "notify")
    if url is not None and not re.match(r"https?://[^\s/]+", url):
        raise ctx.err(f"notify: url must be http(s)://..., got {url!r}", data, "url")
    events = data.get("events", list(NOTIFY_EVENTS))
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events or any(e not in NOTIFY_EVENTS for e in events):
        raise ctx.err(f"notify: events must list some of {', '.join(NOTIFY_EVENTS)}", data, "events")
    return Notify(command, url, tuple(events))


def _git(ctx: _Ctx, raw: Any, parent: dict[Any, Any]) -> GitPolicy:
    data = ctx.mapping(raw, "git", parent, "git")
    ctx.keys(data, ("commit", "push", "author"), "git")
    for key in ("commit", "push"):
        if key in data and not isinstance(data[key], bool):
            raise ctx.err(f"git: {key} must be true or false", data, key)
    author = ctx.string(data, "author", "git")
    if author is not None and not _AUTHOR.fullmatch(author):
        raise ctx.err(f"git: author must look like 'Name <email>', got {author!r}", data, "author")
    return GitPolicy(data.get("commit", True), data.get("push", False), author)


def _check_conflicts(ctx: _Ctx, found: dict[str, SecretPolicy], secrets: dict[Any, Any]) -> None:
    # In one sops file, "a/b" as a value and "a/b/c" beneath it cannot both exist.
    by_file: dict[Path, list[str]] = {}
    for s in found.values():
        by_file.setdefault(s.file, []).append(s.name)
    for names in by_file.values():
        for name in names:
            for other in names:
                if other.startswith(name + "/"):
                    raise ctx.err(
                        f"secret {other!r} cannot live beneath secret {name!r} in the same file",
                        secrets,
                        other,
                    )


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
) -> Policy:
    """Validate a policy mapping (from YAML or playbook params) into a :class:`Policy`.

    ``host_names``: the inventory's hosts (``None`` skips that check);
    ``root``: base of relative ``file`` paths (default: ``path``'s directory).
    """
    ctx = _Ctx(path)
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
