"""Validating a rotation policy: the parse context (file:line errors) and each part's checks.

:func:`infratool.rotation.policy.parse_policy` drives these; they turn the
YAML mapping into the dataclasses of :mod:`infratool.rotation.policy`, or
raise :class:`~infratool.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Any

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.rotation.policy import (
    _ACCOUNT,
    _AUTHOR,
    _NAME_PART,
    _PLACEHOLDER,
    _PLACEHOLDERS,
    NOTIFY_EVENTS,
    RESERVED_NAMES,
    Command,
    Consumer,
    FileTarget,
    GitPolicy,
    Notify,
    SecretPolicy,
    parse_duration,
)
from infratool.secrets import deps, derive, generators


class _Ctx:
    """The file being validated, for error locations."""

    def __init__(self, path: str | Path, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        """Where the policy starts (a playbook task's line): for values with no line of their own."""

    def err(self, message: str, container: Any, key: Any = None) -> InputError:
        return InputError(message, file=self.path, line=yamlsrc.line_of(container, key) or self.line)

    def mapping(self, value: Any, what: str, container: Any, key: Any) -> dict[Any, Any]:
        return yamlsrc.mapping(value, f"{what} must be a mapping", self.path, yamlsrc.line_of(container, key))

    def keys(self, data: dict[Any, Any], allowed: Collection[str], what: str) -> None:
        yamlsrc.check_keys(data, allowed, self.path, f"in {what}", yamlsrc.line_of(data))

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


_CONSUMER_KEYS = ("host", "part", "file", "command", "stdin_template", "reload", "units", "verify")
# A systemd unit name (sops-nix's restartUnits): it is written into generated Nix.
_UNIT = re.compile(r"[A-Za-z0-9@_.:\\-]+\.(service|socket|target|timer|path|mount)")


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
    units_raw = data.get("units") or []
    if isinstance(units_raw, str):
        units_raw = [units_raw]
    if not isinstance(units_raw, list) or not all(
        isinstance(u, str) and _UNIT.fullmatch(u) for u in units_raw
    ):
        raise ctx.err(
            f"{what}: units must be a unit name or a list of them (e.g. app.service)", data, "units"
        )
    verify = ctx.command(data, "verify", what, default_stdin)
    return Consumer(
        host=host,
        part=part,
        file=file,
        command=command,
        reload=tuple(reload_raw),
        units=tuple(units_raw),
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
