"""The command line: parse, call, render, exit code. Nothing else lives here.

Heavy modules (Fabric, rich, the tasks) are imported inside the commands, so
``infratool --help`` starts fast.

Exit codes: 0 ok, 1 a host or task failed, 2 changes pending (with
``--detailed-exitcode``; checks alone are not changes), 3 bad input (nothing touched), 4 host key refused,
5 a saved plan was refused somewhere as stale (facts changed since the plan).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from infratool import __version__
from infratool.cli import globalopts
from infratool.cli.common import (
    Globals,
    command_name,
    emit_json,
    emit_json_error,
    examples,
    pass_globals,
)
from infratool.errors import EXIT_INPUT, InfratoolError, InputError

# Command groups living in their own modules, imported only when used (fast --help).
LAZY_COMMANDS = {
    "hosts": "infratool.cli.hosts:hosts",
    "facts": "infratool.cli.hosts:facts",
    "lab": "infratool.cli.lab:lab",
    "secrets": "infratool.cli.secrets:secrets",
    "timer": "infratool.cli.timer:timer",
    "secureboot": "infratool.cli.secureboot:secureboot",
    "init": "infratool.cli.onboard:init",
    "host": "infratool.cli.onboard:host",
    "completion": "infratool.cli.completion:completion",
    "exec": "infratool.cli.adhoc:exec_command",
    "plan": "infratool.cli.playbooks:plan",
    "run": "infratool.cli.playbooks:run",
    "apply": "infratool.cli.saved:apply",
}


ARGS_KEY = "infratool.args"
"""ctx.meta key of the words given to the program (to find --json after a usage error)."""


class InfratoolGroup(click.Group):
    """Maps infratool errors to messages and exit codes, in one place; loads command modules lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in LAZY_COMMANDS if self._lazy(name) is not None]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name) or self._lazy(name)
        return globalopts.attach(command) if command is not None else None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bare `infratool`: the help, exit 0. click's default exits 2, which
        # here means "changes pending".
        if not args and not ctx.resilient_parsing:  # (resilient: shell completion)
            click.echo(ctx.get_help())
            ctx.exit(0)
        ctx.meta[ARGS_KEY] = list(args)
        return super().parse_args(ctx, args)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        # A usage error on the top level (unknown option, no such command) is
        # bad input: exit 3, as JSON too when --json is on the line.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _usage_error(exc, as_json=_json_in(args))
            sys.exit(EXIT_INPUT)

    @staticmethod
    def _lazy(name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        import importlib

        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # a command module not written yet
                return None
            raise

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run as the program (console script, ``python -m``): exit without interpreter teardown.

        Tearing the interpreter down frees every object of every imported
        module one by one; for a run that is 0.1-0.3 s of pure overhead
        (docs/performance.md). Everything that must outlive the process is
        closed by then (connections, the audit log), so flush the standard
        streams and leave. Tests calling ``main.main(...)`` or click's
        CliRunner never come through here.
        """
        try:
            self.main(*args, **kwargs)
            code: Any = 0
        except SystemExit as exc:
            code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        import contextlib

        for stream in (sys.stdout, sys.stderr):
            # A closed pipe (`| head`): nothing left to say.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InfratoolError as exc:
            from infratool.secrets.secret import REDACTOR

            click.echo(f"error: {REDACTOR.redact(str(exc))}", err=True)
            if _wants_json(ctx):
                emit_json_error(exc, exc.exit_code, _failed_command(ctx))
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            # Usage errors are bad input too: exit 3, not click's 2 (2 means
            # "changes pending" for plan --detailed-exitcode).
            _usage_error(exc, as_json=_wants_json(ctx), command=_failed_command(ctx, exc))
            ctx.exit(EXIT_INPUT)


def _wants_json(ctx: click.Context) -> bool:
    g = ctx.find_object(Globals)
    if g is not None and g.json:
        return True
    # An error while parsing a subcommand's options: its --json may not have
    # been processed yet, so look at the words of the line themselves.
    return _json_in(ctx.find_root().meta.get(ARGS_KEY, []))


def _json_in(words: list[str]) -> bool:
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def _failed_command(ctx: click.Context, exc: click.UsageError | None = None) -> str:
    if exc is not None and exc.ctx is not None:
        return command_name(exc.ctx)
    g = ctx.find_object(Globals)
    return g.command if g is not None else ""


def _usage_error(exc: click.UsageError, as_json: bool, command: str = "") -> None:
    exc.show()
    if as_json:
        emit_json_error(exc, EXIT_INPUT, command or (command_name(exc.ctx) if exc.ctx else ""))


@click.group(
    cls=InfratoolGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Plan-first automation for a NixOS fleet: secrets rotation, remote builders, "
    "binary cache, Secure Boot."
    + examples(
        "infratool hosts --check",
        "infratool plan playbooks/site.yaml",
        "infratool run playbooks/site.yaml --limit tag:builder --yes",
    ),
)
@click.option(
    "-i",
    "--inventory",
    envvar="INFRATOOL_INVENTORY",
    metavar="FILE",
    help="Inventory file [env INFRATOOL_INVENTORY; default ./hosts.yaml].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option(
    "--audit-log",
    type=click.Path(path_type=Path),
    envvar="INFRATOOL_AUDIT_LOG",
    help="Audit log file [env INFRATOOL_AUDIT_LOG; default ~/.local/state/infratool/audit.jsonl].",
)
@click.option(
    "--log-format",
    type=click.Choice(globalopts.LOG_FORMATS),
    default=None,
    envvar="INFRATOOL_LOG_FORMAT",
    help="Log and progress lines on stderr as text or JSON lines (for log collectors) "
    "[env INFRATOOL_LOG_FORMAT; default: text].",
)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also append the log (JSON lines, at least INFO) to FILE.",
)
@click.version_option(__version__, "-V", "--version", prog_name="infratool")
@click.pass_context
def main(
    ctx: click.Context,
    inventory: str | None,
    as_json: bool,
    verbose: int,
    quiet: bool,
    audit_log: Path | None,
    log_format: str | None,
    log_file: Path | None,
) -> None:
    """Entry point (see --help)."""
    ctx.obj = Globals(
        inventory=inventory,
        json=as_json,
        verbosity=-1 if quiet else verbose,
        audit_log=audit_log,
        log_format=log_format,
        log_file=log_file,
    )
    if ctx.invoked_subcommand not in (None, "completion"):
        ctx.obj.configure_logging()


# -- tasks -------------------------------------------------------------------


@main.command(
    "tasks",
    help="List every task a playbook can use; with NAME, its parameters, types, defaults and an example."
    + examples(
        "infratool tasks",
        "infratool tasks files.content",
        "infratool tasks --markdown > docs/tasks.md",
    ),
)
@click.argument("name", required=False)
@click.option("--markdown", is_flag=True, help="The reference page docs/tasks.md, generated from the tasks.")
@pass_globals
def tasks_command(g: Globals, name: str | None, markdown: bool) -> None:
    from infratool import taskdoc
    from infratool.suggest import did_you_mean

    docs = taskdoc.all_tasks()
    if markdown:
        click.echo(taskdoc.markdown(docs), nl=False)
        return
    if name is None:
        if g.json:
            emit_json([{"name": d.name, "summary": d.summary} for d in docs])
            return
        from infratool.cli import output as render

        render.records(
            render.console(),
            None,
            [render.Column("task", keep=True), render.Column("summary")],
            [[d.name, d.summary] for d in docs],
        )
        return
    by_name = {d.name: d for d in docs}
    if name not in by_name:
        raise InputError(f"unknown task {name!r}{did_you_mean(name, by_name)} (see `infratool tasks`)")
    doc = by_name[name]
    if g.json:
        emit_json(doc.to_dict())
        return
    from infratool.cli import output as render

    con = render.console()
    click.echo(f"{doc.name}: {doc.summary}\n")
    if doc.description and doc.description != doc.summary:
        click.echo(doc.description + "\n")
    if doc.params:
        render.records(
            con,
            "Parameters",
            [
                render.Column("parameter", keep=True),
                render.Column("type", keep=True),
                render.Column("required"),
                render.Column("default"),
                render.Column("description"),
            ],
            [
                [
                    p.name,
                    p.type,
                    "yes" if p.required else "no",
                    "" if p.default is None else repr(p.default),
                    p.help,
                ]
                for p in doc.params
            ],
        )
    else:
        click.echo("No parameters.")
    click.echo("\nExample:\n" + "\n".join(f"  {line}" for line in doc.example.splitlines()))


if __name__ == "__main__":  # pragma: no cover
    main()
