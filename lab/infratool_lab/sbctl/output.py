"""How sbctl reports: its error kinds (how main.go prints each) and logging/logging.go."""

from __future__ import annotations

import json
import os
from typing import Any, TextIO


class _Fail(Exception):
    """An error that ends the command with exit 1.

    ``how`` picks main.go's branch: "error" (logging.Error, stderr),
    "println" (logging.Println, stdout) or "silent" (ErrSilent).
    ``permission`` marks errors that wrap os.ErrPermission, which main.go
    prefixes with "sbctl requires root to run: ".
    """

    def __init__(self, message: str, *, how: str = "error", permission: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.how = how
        self.permission = permission

    def wrap(self, prefix: str, *, keep: bool = True) -> _Fail:
        """Return ``fmt.Errorf(prefix + "%w"/"%v", self)``."""
        return _Fail(prefix + self.message, how=self.how, permission=self.permission and keep)


class _Exit(Exception):
    """An ``os.Exit(code)`` that skips main.go's error printing."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _FlagError(Exception):
    """A pflag parse error; cobra's FlagErrorFunc prints it with the usage."""


class _AlreadySigned(Exception):
    """keys.go's ErrAlreadySigned."""


class _Log:
    """sbctl's logging package: symbols, colours, on/off and quiet switches."""

    def __init__(self, out: TextIO, err: TextIO, env: dict[str, str]) -> None:
        self.out = out
        self.err = err
        self.on = True
        self.disable_info = False
        plain = env.get("SBCTL_UNICODE") == "0"
        isatty = getattr(out, "isatty", None)
        # fatih/color decides once, from stdout alone.
        self.color = not (env.get("NO_COLOR") or env.get("TERM") == "dumb" or not (isatty and isatty()))
        self.ok_sym = self._paint("[+]" if plain else "✓", "32;1")
        self.notok_sym = self._paint("[-]" if plain else "✗", "31;1")
        self.warn_sym = self._paint("[!]" if plain else "‼", "33;1")

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _write(self, stream: TextIO, text: str) -> None:
        if self.on:
            # Flush the other stream first so interleaved output keeps its order.
            (self.err if stream is self.out else self.out).flush()
            stream.write(text)
            stream.flush()

    def print(self, text: str) -> None:
        """logging.Print: stdout, muted by --quiet and --json."""
        if not self.disable_info:
            self._write(self.out, text)

    def println(self, text: str) -> None:
        """logging.Println."""
        self.print(text + "\n")

    def ok(self, text: str) -> None:
        """logging.Ok."""
        self.print(f"{self.ok_sym} {text}\n")

    def notok(self, text: str) -> None:
        """logging.NotOk."""
        self.print(f"{self.notok_sym} {text}\n")

    def warnf(self, text: str) -> str:
        """logging.Warnf."""
        return f"{self.warn_sym} {text}\n"

    def warn(self, text: str) -> None:
        """logging.Warn: stderr, not muted by --quiet."""
        self._write(self.err, self.warnf(text))

    def error(self, text: str) -> None:
        """logging.Error: the whole line in bold red on stderr."""
        self._write(self.err, self._paint(text + "\n", "31;1"))

    def json(self, value: Any) -> None:
        """main.go JsonOut: printed even under --json, muted by --quiet."""
        self.on = True
        self.println(_go_json(value, 2))
        self.on = False


def _go_json(value: Any, indent: int, *, sort_keys: bool = False) -> str:
    """json.MarshalIndent output: Go escapes <, >, & and U+2028/9 in strings."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=sort_keys)
    for char, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _go_quote(text: str) -> str:
    """Go's %q for the plain strings that appear in flag errors."""
    return json.dumps(text, ensure_ascii=False)


def _os_error(op: str, shown_path: str, exc: OSError) -> str:
    """Format an OSError like Go's *PathError ("open /x: no such file or directory")."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{op} {shown_path}: {reason[:1].lower()}{reason[1:]}"
