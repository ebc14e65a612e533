"""``infratool exec``: one ad-hoc command on a selection of hosts (``ansible -a``, ``pyinfra exec``).

The same pinned host keys, the same parallel pool and the same redaction as a
playbook run; no plan (the command is the change), and no audit of its
output, only of the command and each host's exit code.
"""

from __future__ import annotations

import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click

from infratool.cli.common import (
    Globals,
    emit_json,
    examples,
    forks_option,
    limit_option,
    load_inventory,
    pass_globals,
    timeout_option,
)
from infratool.errors import EXIT_FAILED, EXIT_HOSTKEY, EXIT_OK, InfratoolError, InputError


@dataclass
class HostOutput:
    """What the command did on one host; ``exited`` is None when it never ran."""

    host: str
    exited: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "host": self.host,
            "exit": self.exited,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
        }


def command_line(words: tuple[str, ...]) -> str:
    """One word is a shell command line as typed; several are quoted exactly as given."""
    if not words:
        raise InputError("exec needs a command: infratool exec [--limit SEL] -- COMMAND")
    return words[0] if len(words) == 1 else shlex.join(words)


def exit_code(outputs: list[HostOutput]) -> int:
    """4 if a host key was refused, 1 if any host failed or could not run it, else 0."""
    if any(o.refused for o in outputs):
        return EXIT_HOSTKEY
    return EXIT_OK if all(o.exited == 0 for o in outputs) else EXIT_FAILED


@click.command(
    "exec",
    help="Run an ad-hoc shell command on hosts (pinned keys, in parallel); print each host's output "
    "and exit code. Exit 0 when it succeeded everywhere, 1 when it failed or could not run on a "
    "host, 4 when a host key was refused."
    + examples(
        "infratool exec --limit @builder -- nix store ping",
        "infratool exec -- 'systemctl is-active nginx || true'",
        "infratool exec --limit snix --json -- uname -r",
    ),
)
@limit_option
@forks_option
@timeout_option
@click.argument("words", nargs=-1, required=True, metavar="-- COMMAND...")
@pass_globals
def exec_command(
    g: Globals, limit: str | None, forks: int, timeout: float | None, words: tuple[str, ...]
) -> None:
    from infratool import log
    from infratool.errors import HostKeyError
    from infratool.remote import Remote

    command = command_line(words)
    inv = load_inventory(g)
    hosts = inv.select(limit)

    def one(host: Any) -> HostOutput:
        try:
            with Remote(host, command_timeout=timeout) as remote:
                r = remote.run(command, check=False, what="exec")
            return HostOutput(host.name, r.exited, r.stdout, r.stderr)
        except InfratoolError as exc:
            message = str(exc).removeprefix(f"{host.name}: ")
            return HostOutput(host.name, None, error=message, refused=isinstance(exc, HostKeyError))

    with ThreadPoolExecutor(max_workers=forks) as pool:
        outputs = list(pool.map(one, hosts))
    code = exit_code(outputs)
    log.audit(
        {
            "command": "exec",
            "exec": command,
            "hosts": [o.host for o in outputs],
            "outcome": {o.host: {"exit": o.exited, "error": o.error} for o in outputs},
            "exit_code": code,
        },
        g.audit_log,
    )
    if g.json:
        emit_json({"exec": command, "hosts": [o.to_dict() for o in outputs]})
    else:
        _show(outputs)
    sys.exit(code)


def _show(outputs: list[HostOutput]) -> None:
    from rich.text import Text

    from infratool.cli import output as render

    con = render.console()
    for o in outputs:
        if o.exited is None:
            head = Text(f"{o.host}: ", style="bold").append(
                f"not run: {render.REDACTOR.redact(o.error or '')}", style="bold red"
            )
        else:
            head = Text(f"{o.host}: ", style="bold").append(
                f"exit {o.exited}", style="green" if o.exited == 0 else "bold red"
            )
        con.print(head)
        for stream, style in ((o.stdout, ""), (o.stderr, "yellow")):
            for line in stream.splitlines():
                con.print(Text(f"  {line}", style=style))
    ok = sum(1 for o in outputs if o.exited == 0)
    con.print(Text(f"exec: exit 0 on {ok} of {len(outputs)} host(s)", style="bold"))
