"""Global options that may stand anywhere on the line, as in Ansible and pyinfra.

``infratool plan x.yaml --json -v -i hosts.yaml`` means the same as
``infratool -i hosts.yaml --json -v plan x.yaml``. The options are declared
once, on the top-level group; :func:`attach` adds hidden copies to every
subcommand (and sub-subcommand) whose callbacks update the shared
:class:`~infratool.cli.common.Globals`. A subcommand that has an option of the
same spelling keeps its own (``secureboot status --json`` does the same thing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from infratool.cli.common import Globals, command_name

LOG_FORMATS = ("json", "text")

_MARK = "_infratool_globals_attached"


def _update(apply: Callable[[Globals, Any], None]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that applies a late global option to the shared Globals, then re-configures logging."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        g = ctx.find_object(Globals)
        if g is None:
            return value
        g.command = command_name(ctx)  # the deepest command parsed so far: the one that runs
        if value not in (None, False, 0, ()):  # given after the subcommand
            apply(g, value)
            if ctx.find_root().invoked_subcommand != "completion":
                g.configure_logging()
        return value

    return callback


def _set_inventory(g: Globals, v: str) -> None:
    g.inventory = v


def _set_json(g: Globals, v: bool) -> None:
    g.json = True


def _add_verbose(g: Globals, v: int) -> None:
    g.verbosity = max(g.verbosity, 0) + v


def _set_quiet(g: Globals, v: bool) -> None:
    g.verbosity = -1


def _set_audit_log(g: Globals, v: Path) -> None:
    g.audit_log = v


def _set_log_format(g: Globals, v: str) -> None:
    g.log_format = v


def _set_log_file(g: Globals, v: Path) -> None:
    g.log_file = v


def late_options() -> list[click.Option]:
    """Hidden copies of the global options for a subcommand (fresh objects each call)."""
    return [
        click.Option(
            ["-i", "--inventory"],
            metavar="FILE",
            hidden=True,
            expose_value=False,
            callback=_update(_set_inventory),
        ),
        click.Option(["--json"], is_flag=True, hidden=True, expose_value=False, callback=_update(_set_json)),
        click.Option(
            ["-v", "--verbose"], count=True, hidden=True, expose_value=False, callback=_update(_add_verbose)
        ),
        click.Option(
            ["-q", "--quiet"], is_flag=True, hidden=True, expose_value=False, callback=_update(_set_quiet)
        ),
        click.Option(
            ["--audit-log"],
            type=click.Path(path_type=Path),
            hidden=True,
            expose_value=False,
            callback=_update(_set_audit_log),
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(LOG_FORMATS),
            hidden=True,
            expose_value=False,
            callback=_update(_set_log_format),
        ),
        click.Option(
            ["--log-file"],
            type=click.Path(path_type=Path, dir_okay=False),
            hidden=True,
            expose_value=False,
            callback=_update(_set_log_file),
        ),
    ]


def attach(command: click.Command) -> click.Command:
    """Give ``command`` and everything below it the late global options (once)."""
    if getattr(command, _MARK, False):
        return command
    taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for option in late_options():
        if not taken.intersection(option.opts):
            command.params.append(option)
    setattr(command, _MARK, True)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub)
    return command
