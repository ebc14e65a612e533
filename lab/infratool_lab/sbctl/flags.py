"""cobra/pflag emulation: flags and commands as data, flag parsing, usage columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .output import _FlagError, _go_quote
from .runtime import Opts, _Ctx


@dataclass(frozen=True)
class _Flag:
    """A pflag flag: bool, string, a StringSet ("set") or a comma list ("list")."""

    name: str
    usage: str
    short: str = ""
    kind: str = "bool"
    allowed: tuple[str, ...] = ()
    noopt: str = ""
    dest: str = ""
    hidden: bool = False

    @property
    def key(self) -> str:
        return self.dest or self.name

    @property
    def noopt_value(self) -> str:
        return "true" if self.kind == "bool" else self.noopt

    def type_name(self) -> str:
        return {"bool": "", "string": "string", "list": ""}.get(self.kind, "[" + ",".join(self.allowed) + "]")

    def display(self) -> str:
        return f"-{self.short}, --{self.name}" if self.short else f"--{self.name}"


@dataclass(frozen=True)
class _Command:
    """A cobra command; ``run`` None means "exists upstream, not emulated"."""

    name: str
    short: str
    run: Callable[[_Ctx, Opts, list[str]], None] | None
    flags: tuple[_Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    hidden: bool = False
    since: tuple[int, ...] = (0,)
    """The sbctl release that added the command (older builds answer "unknown command")."""


_GLOBAL_FLAGS = (
    _Flag("json", "Output as json"),
    _Flag("quiet", "Mute info from logging"),
    _Flag("disable-landlock", "Disable landlock sandboxing"),
    _Flag("debug", "Enable verbose debug logging"),
    _Flag("config", "Path to configuration file", kind="string"),
)
_PARTIAL = ("PK", "KEK", "db")


def _parse_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {_go_quote(text)}: invalid syntax")


def _set_flag(flag: _Flag, value: str, values: Opts) -> None:
    try:
        if flag.kind == "bool":
            values[flag.key] = _parse_bool(value)
        elif flag.kind == "string":
            values[flag.key] = value
        elif flag.kind == "set":
            if value not in flag.allowed:
                raise ValueError(f"{value} is not included in {','.join(flag.allowed)}")
            values[flag.key] = value
        else:
            values.setdefault(flag.key, []).extend(value.split(","))
    except ValueError as exc:
        raise _FlagError(
            f"invalid argument {_go_quote(value)} for {_go_quote(flag.display())} flag: {exc}"
        ) from exc


def _parse_flags(flags: list[_Flag], args: list[str]) -> tuple[Opts, list[str]]:
    """pflag FlagSet.Parse with interspersed arguments."""
    by_name = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    values: Opts = {}
    positional: list[str] = []
    rest = list(args)
    while rest:
        s = rest.pop(0)
        if len(s) < 2 or s[0] != "-":
            positional.append(s)
            continue
        if s[1] == "-":
            if len(s) == 2:
                positional.extend(rest)
                break
            body = s[2:]
            if body[0] in "-=":
                raise _FlagError(f"bad flag syntax: {s}")
            name, eq, value = body.partition("=")
            flag = by_name.get(name)
            if flag is None:
                raise _FlagError(f"unknown flag: --{name}")
            if not eq:
                if flag.noopt_value:
                    value = flag.noopt_value
                elif rest:
                    value = rest.pop(0)
                else:
                    raise _FlagError(f"flag needs an argument: {s}")
            _set_flag(flag, value, values)
            continue
        shorts = s[1:]
        while shorts:
            c = shorts[0]
            flag = by_short.get(c)
            if flag is None:
                raise _FlagError(f"unknown shorthand flag: '{c}' in -{shorts}")
            if len(shorts) > 2 and shorts[1] == "=":
                value, shorts = shorts[2:], ""
            elif flag.noopt_value:
                value, shorts = flag.noopt_value, shorts[1:]
            elif len(shorts) > 1:
                value, shorts = shorts[1:], ""
            elif rest:
                value, shorts = rest.pop(0), ""
            else:
                raise _FlagError(f"flag needs an argument: '{c}' in -{shorts}")
            _set_flag(flag, value, values)
    return values, positional


def _strip_flags(args: list[str], flags: Sequence[_Flag]) -> list[str]:
    """cobra stripFlags: the non-flag words, guessing which flags take values."""
    long_noopt = {f.name for f in flags if f.noopt_value}
    short_noopt = {f.short for f in flags if f.short and f.noopt_value}
    commands: list[str] = []
    rest = list(args)
    while rest:
        s = rest.pop(0)
        if s == "--":
            break
        takes_value = (s.startswith("--") and "=" not in s and s[2:] not in long_noopt) or (
            s.startswith("-") and "=" not in s and len(s) == 2 and s[1:] not in short_noopt
        )
        if takes_value:
            if len(rest) <= 1:
                break
            rest.pop(0)
            continue
        if s and not s.startswith("-"):
            commands.append(s)
    return commands


def _args_minus_first(args: list[str], word: str, flags: Sequence[_Flag]) -> list[str]:
    """cobra argsMinusFirstX."""
    long_noopt = {f.name for f in flags if f.noopt_value}
    short_noopt = {f.short for f in flags if f.short and f.noopt_value}
    pos = 0
    while pos < len(args):
        s = args[pos]
        if s == "--":
            break
        if (s.startswith("--") and "=" not in s and s[2:] not in long_noopt) or (
            s.startswith("-") and "=" not in s and len(s) == 2 and s[1:] not in short_noopt
        ):
            pos += 2
            continue
        if not s.startswith("-") and s == word:
            return args[:pos] + args[pos + 1 :]
        pos += 1
    return args


def _levenshtein(a: str, b: str) -> int:
    a, b = a.lower(), b.lower()
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _flag_usages(flags: list[_Flag]) -> str:
    """pflag FlagUsages: aligned columns, sorted by name, hidden flags left out."""
    lines = []
    for flag in sorted((f for f in flags if not f.hidden), key=lambda f: f.name):
        line = f"  -{flag.short}, --{flag.name}" if flag.short else f"      --{flag.name}"
        if flag.type_name():
            line += " " + flag.type_name()
        if flag.noopt and flag.kind != "bool":
            line += f"[={flag.noopt}]"
        lines.append((line, flag.usage))
    width = max(len(line) + 1 for line, _ in lines)
    return "".join(f"{line} {' ' * (width - len(line))} {usage}\n" for line, usage in lines).rstrip()
