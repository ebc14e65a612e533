"""Strategies and checks shared by the fuzz tests: malformed YAML near real inputs.

Two kinds of malformed input:

- **text mutations** of real files (a deleted span, an inserted YAML token or
  hostile string, a duplicated or re-indented line): broken syntax, broken
  structure, values of the wrong type, all close to what an operator writes;
- **structured mutations**: a real document parsed, one node somewhere in it
  replaced by a random value (wrong type, hostile string, deep nesting), so
  validation code is reached past the YAML syntax.

:func:`only_input_errors` runs a parser and lets only :class:`InputError`
(with a file, and a line whenever the YAML itself parsed) out; while it runs,
opening a socket or starting a process fails the test ("never touch a host").
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from infratool import yamlsrc
from infratool.errors import InputError

HOSTILE = [
    "",
    " ",
    "..",
    "../../etc/shadow",
    "/var/lib/x/../../etc/shadow",
    "/var/lib/x'; touch /tmp/pwned; '",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a\nb",
    "a\rb",
    "\x00",
    "\t",
    "~root",
    "-rf",
    "--help",
    "{value}",
    "{nope}",
    "{",
    "%s%n",
    "\\",
    "'",
    '"',
    "é✓",
    "\u2028",
    "\ufeff",
    "1e3",
    "0644",
    "0999",
    "yes",
    "null",
    "*",
    "!x",
    "tag:",
    "all,!all",
    "x" * 300,
]
"""Strings that have broken parsers, shells or path checks somewhere."""

YAML_TOKENS = [
    ":",
    ": ",
    "- ",
    "-",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "*nope",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!map ",
    "!!seq ",
    "!!str ",
    "!!binary ",
    "!!timestamp ",
    "!!python/object:os.system ",
    "!local ",
    "<<: ",
    "<<: *a",
    "|",
    ">-",
    "'",
    '"',
    "#",
    "\t",
    "\n",
    "\n  ",
    "    ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "\x00",
    "\x85",
    "\ud800",
    "2001-02-30",
    "2001-13-01 10:00:00",
    "0x_",
    "0o99",
    "1_0",
    "~",
    "null",
    "true",
    ".nan",
    "1" * 5000,
]
"""Fragments that move a YAML parser into its odd corners."""


def scalars() -> st.SearchStrategy[Any]:
    """Leaves: every YAML scalar type, hostile strings, random text."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(HOSTILE),
        st.text(max_size=20),
    )


def values(keys: list[str]) -> st.SearchStrategy[Any]:
    """Nested lists/mappings of scalars; mapping keys mostly from ``keys`` (the schema's own)."""
    key = st.one_of(st.sampled_from(keys or ["x"]), st.sampled_from(HOSTILE), st.integers(0, 3), st.none())
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(key, inner, max_size=4),
        ),
        max_leaves=12,
    )


@st.composite
def text_mutation(draw: st.DrawFn, seed: str) -> str:
    """``seed`` with one to three random edits."""
    text = seed
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["delete", "insert", "dup-line", "indent", "swap", "replace-line"]))
        if op in ("delete", "insert"):
            at = draw(st.integers(0, len(text)))
            if op == "delete":
                text = text[:at] + text[at + draw(st.integers(1, 40)) :]
            else:
                piece = draw(st.one_of(st.sampled_from(YAML_TOKENS), st.sampled_from(HOSTILE)))
                text = text[:at] + piece + text[at:]
            continue
        i = draw(st.integers(0, len(lines) - 1))
        if op == "dup-line":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t", "      "])) + lines[i].lstrip()
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = draw(st.sampled_from(HOSTILE + YAML_TOKENS))
        text = "\n".join(lines)
    return text


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _keys(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found.append(str(k))
            found += _keys(v)
    elif isinstance(node, list):
        for v in node:
            found += _keys(v)
    return sorted(set(found))


@st.composite
def structured_mutation(draw: st.DrawFn, seed: str) -> str:
    """``seed`` parsed, one node replaced (or a key dropped/added), dumped back to YAML."""
    data = yaml.safe_load(seed)
    paths = list(_paths(data))
    target = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "replace", "drop", "add-key"]))
    new = draw(values(_keys(data)))
    if not target:
        data = new if op == "replace" else data
    else:
        parent = data
        for step in target[:-1]:
            parent = parent[step]
        last = target[-1]
        if op == "drop":
            del parent[last]
        elif op == "add-key" and isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from([*_keys(data), *HOSTILE]))] = new
        else:
            parent[last] = new
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)


def dump(data: Any) -> str:
    """``data`` as YAML text (what a generated document looks like on disk)."""
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def malformed(seed: str) -> st.SearchStrategy[str]:
    """Either kind of mutation of ``seed``."""
    return st.one_of(text_mutation(seed), structured_mutation(seed))


def _yaml_parses(text: str) -> bool:
    try:
        yamlsrc.loads(text)
    except InputError:
        return False
    return True


NO_LINE_OK = (
    "include cycle",
    "nested too deeply",
    # A sops file a policy names, read while validating: about that whole file.
    "not a sops-encrypted file",
    "has been tampered with",
    "cannot decrypt",
    "malformed sops file",
)
"""Errors about a file as a whole, which have no one line to point at."""


def only_input_errors(
    call: Callable[[], Any], text: str, no_line_ok: tuple[str, ...] = ()
) -> InputError | None:
    """Run ``call`` (which parses ``text``); only a located InputError may escape it.

    Returns the InputError (or None when the input was accepted). Anything
    else — a traceback-worthy exception, a socket, a subprocess — fails.
    """
    with no_contact():
        try:
            call()
        except InputError as exc:
            assert exc.file, f"InputError without a file: {exc!r}"
            if exc.line is None and not any(s in exc.message for s in NO_LINE_OK + no_line_ok):
                assert not _yaml_parses(text), f"the YAML parsed, but the error has no line: {exc}"
            assert exc.line is None or exc.line >= 1
            assert "Traceback" not in str(exc)
            # For --hypothesis-show-statistics: which checks the inputs reached.
            _event(f"refused: {' '.join(exc.message.split()[:3])}")
            return exc
    _event("accepted")
    return None


def _event(what: str) -> None:
    if currently_in_test_context():
        event(what)


class Contact(AssertionError):
    """Parsing tried to reach the outside world."""


@contextmanager
def no_contact() -> Iterator[None]:
    """Fail on any socket connection, or any child process but sops, while the block runs.

    sops is local (validation may decrypt a policy's existing sops files); any
    other process (ssh, a deploy command) or any socket would mean a host.
    """

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Contact(f"parsing tried to connect or run something: {args!r}")

    saved = (socket.socket.connect, socket.create_connection, subprocess.Popen.__init__)

    def only_sops(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        argv0 = args[0] if isinstance(args, list | tuple) and args else args
        if Path(str(argv0)).name != "sops":
            refuse(args)
        saved[2](self, args, *rest, **kwargs)

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    subprocess.Popen.__init__ = only_sops  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, subprocess.Popen.__init__ = saved  # type: ignore[method-assign,assignment]


def write(path: Path, text: str) -> Path:
    """Write ``text`` (lone surrogates become invalid UTF-8, as a broken editor could write) to ``path``."""
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    return path
