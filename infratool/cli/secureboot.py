"""``infratool secureboot ...``: the fleet's Secure Boot readiness, key restore and guarded enrollment.

Each command runs one ``secureboot.*`` task through the engine (plan, confirm,
apply, verify), exactly as a playbook entry would; the tasks hold every rule
(see ``infratool/tasks/secureboot/``). ``status`` only plans: the status task
changes nothing and its reports come back in the plan (``Plan.reports``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from infratool.cli.common import (
    Globals,
    emit_json,
    examples,
    forks_option,
    limit_option,
    load_inventory,
    need_terminal,
    pass_globals,
    progress_display,
)
from infratool.errors import EXIT_FAILED, InputError


@click.group(
    help="Secure Boot with sbctl and lanzaboote: readiness, key restore, enrollment into firmware. "
    "Keys and their encrypted backup come from playbooks/secureboot.yaml (docs/secure-boot.md)."
    + examples(
        "infratool secureboot status",
        "infratool --json secureboot status --limit snix",
        "infratool secureboot restore snix",
        "infratool secureboot enroll snix --confirm enroll-secure-boot-keys-on-snix",
    )
)
def secureboot() -> None:
    """The secureboot command group."""


def _runner(g: Globals, task_name: str, args: dict[str, Any], limit: str | None, **options: Any):
    """(inventory, playbook, Runner) for one secureboot task over ``limit``, validated before connecting."""
    return _tasks_runner(g, [(task_name, args)], limit, **options)


def _tasks_runner(g: Globals, tasks: list[tuple[str, dict[str, Any]]], limit: str | None, **options: Any):
    """(inventory, playbook, Runner) for secureboot tasks run in order over ``limit``."""
    from infratool.options import RunOptions
    from infratool.playbook import Invocation, Playbook
    from infratool.runner import Runner
    from infratool.tasks.base import TASKS, Source, check_args, load_all

    inv = load_inventory(g)
    if limit:
        inv.select(limit)  # a selection matching nothing is bad input, before any connection
    load_all()
    invocations = []
    for task_name, args in tasks:
        cls = TASKS[task_name]
        source = Source(file=Path("command line"), line=None, params=args)
        task = cls(check_args(cls, args, source), source, inv)
        invocations.append(Invocation(task=task, selections=("all",), playbook=task_name, label=task.label()))
    name = " + ".join(t for t, _ in tasks)
    book = Playbook(path=Path("command line"), name=name, description="", invocations=invocations)
    run_options = RunOptions(limit=limit, audit_log=g.audit_log, **options)
    return inv, book, Runner(inv, book, run_options, on_event=progress_display(g))


@secureboot.command(
    help="Secure Boot readiness per host: sbctl installed, Setup Mode, Secure Boot, vendor keys, keys "
    "present, unsigned boot files, key backup, and a verdict with the next step. Changes nothing; "
    "exit 1 when a host cannot be reached."
    + examples("infratool secureboot status", "infratool secureboot status --json --limit 'tag:laptop'")
)
@limit_option
@forks_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (like the global --json).")
@pass_globals
def status(g: Globals, limit: str | None, forks: int, as_json: bool) -> None:
    from infratool.tasks.secureboot import HostReport, unreachable

    inv, _, runner = _runner(g, "secureboot.status", {}, limit, forks=forks)
    with runner, runner.on_event:
        plan = runner.plan()
    # The reports travel in the plan, as data (the status task's PlanContext.report).
    rows = [
        HostReport.from_dict(plan.reports[h.name]["secureboot.status"])
        if "secureboot.status" in plan.reports.get(h.name, {})
        else unreachable(h.name, plan.failures.get(h.name, "not planned"))
        for h in inv.select(limit)
    ]
    if g.json or as_json:
        emit_json([r.to_dict() for r in rows])
    else:
        _table(rows)
    sys.exit(EXIT_FAILED if any(not r.reachable for r in rows) else 0)


def _yes_no(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "?" if value is None else (yes if value else no)


def _table(rows: list[Any]) -> None:
    from rich.text import Text

    from infratool.cli import output as render

    con = render.console()
    good = {"enabled", "ready-to-enroll"}
    # Host and verdict are never cut: a table only when they fit, else one line per host.
    columns = [render.Column("host", keep=True)]
    columns += [
        render.Column(c)
        for c in ("sbctl", "setup mode", "secure boot", "vendor keys", "keys", "backup", "unsigned")
    ]
    columns.append(render.Column("verdict", keep=True))
    table_rows: list[list[Any]] = []
    for r in rows:
        if not r.reachable:
            table_rows.append([r.host, *["?"] * 7, Text("unreachable", style="bold red")])
            continue
        unsigned = "?" if r.unsigned_files is None else str(len(r.unsigned_files))
        table_rows.append(
            [
                r.host,
                "yes" if r.sbctl else Text("not installed", style="red"),
                _yes_no(r.setup_mode, "on", "off"),
                _yes_no(r.secure_boot, "on", "off"),
                ", ".join(r.vendors) or ("none" if r.sbctl and r.uefi else "?"),
                r.pki_bundle if r.keys_present else "none",
                r.backup.state if r.backup else "?",
                unsigned,
                Text(r.verdict, style="green" if r.verdict in good else "yellow"),
            ]
        )
    render.records(con, "Secure Boot", columns, table_rows)
    for r in rows:
        con.print(Text(f"{r.host}: ", style="bold") + Text(render.REDACTOR.redact(r.next_step)))
        for line in ([r.error] if r.error else []) + r.warnings:
            con.print(Text(f"  {render.REDACTOR.redact(line)}", style="yellow"))


def _plan_confirm_apply(
    g: Globals, book: Any, runner: Any, yes: bool, question: str, command: str
) -> tuple[Any, Any, Any]:
    """Plan, show, confirm, apply and audit: ``(console, plan, result)``; ``result`` is None when nothing changes.

    The CLI's one run sequence (:func:`infratool.cli.sequence.run_sequence`);
    a declined confirmation is audited there and exits 1.
    """
    from infratool.cli import output as render
    from infratool.cli.sequence import run_sequence

    outcome = run_sequence(g, book, runner, command=command, yes=yes, question=question, apply_empty=False)
    return render.console(), outcome.plan, outcome.result


def _plan_and_apply(g: Globals, book: Any, runner: Any, yes: bool, question: str, command: str) -> None:
    """Like `infratool run`: plan, show, confirm, apply, report; exits with the run's code."""
    from infratool.cli import output as render
    from infratool.runner import plan_exit_code

    out, the_plan, result = _plan_confirm_apply(g, book, runner, yes, question, command)
    if result is None:
        if g.json:
            emit_json(the_plan.to_dict())
        sys.exit(plan_exit_code(the_plan, detailed=False))
    emit_json(result.to_dict()) if g.json else render.results(out, result)
    sys.exit(result.exit_code)


@secureboot.command(
    help="Restore HOSTs' Secure Boot keys from secrets/secureboot/<host>.yaml (e.g. after a "
    "reinstall): bit-for-bit, root-owned, checked by SHA-256. Refuses to overwrite different keys."
    + examples("infratool secureboot restore snix", "infratool secureboot restore snix --yes")
)
@click.argument("hosts", nargs=-1, required=True)
@click.option("--pki-bundle", metavar="DIR", help="Restore into DIR instead of the backed-up directory.")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@pass_globals
def restore(g: Globals, hosts: tuple[str, ...], pki_bundle: str | None, yes: bool) -> None:
    need_terminal(yes)
    args = {"pki_bundle": pki_bundle}
    _, book, runner = _runner(g, "secureboot.restore", args, ",".join(hosts), yes=yes)
    _plan_and_apply(g, book, runner, yes, "Restore these keys?", "secureboot restore")


@secureboot.command(
    help="Enroll HOSTs' keys into their UEFI firmware (sbctl enroll-keys). Refused unless each host "
    "is in Setup Mode, its encrypted backup is exactly its keys, and --confirm names it. Microsoft's "
    "keys are kept unless --no-microsoft (the plan says what that costs, and lists every certificate "
    "the firmware holds now that enrollment drops). Immutable efivarfs files are handled with sbctl's "
    "--ignore-immutable."
    + examples(
        "infratool secureboot enroll snix --confirm enroll-secure-boot-keys-on-snix",
        "infratool secureboot enroll snix slax --confirm enroll-secure-boot-keys-on-snix "
        "--confirm enroll-secure-boot-keys-on-slax",
    )
)
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--confirm",
    "confirm",
    multiple=True,
    metavar="PHRASE",
    help="enroll-secure-boot-keys-on-HOST, once per host (typed on purpose).",
)
@click.option(
    "--microsoft/--no-microsoft",
    default=True,
    show_default=True,
    help="Keep Microsoft's UEFI CAs (option ROMs, Windows, shim need them).",
)
@click.option(
    "--tpm-eventlog",
    is_flag=True,
    help="Also enroll the checksums of the option ROMs the TPM event log records (sbctl --tpm-eventlog).",
)
@click.option(
    "--firmware-builtin",
    "firmware_builtin",
    multiple=True,
    type=click.Choice(["db", "KEK"]),
    help="Keep the firmware's built-in certificates of this variable (sbctl --firmware-builtin); repeatable.",
)
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (the confirmation is still needed).")
@pass_globals
def enroll(
    g: Globals,
    hosts: tuple[str, ...],
    confirm: tuple[str, ...],
    microsoft: bool,
    tpm_eventlog: bool,
    firmware_builtin: tuple[str, ...],
    yes: bool,
) -> None:
    from infratool.tasks.secureboot.enroll import CONFIRM_PREFIX

    # The missing confirmation is the real problem, whatever stdin is: say so
    # first (it used to read "pass --yes", which would not have been enough).
    missing = [f"--confirm {CONFIRM_PREFIX}{h}" for h in hosts if f"{CONFIRM_PREFIX}{h}" not in confirm]
    if missing:
        raise InputError(f"enrolling writes firmware: type {' '.join(missing)} (nothing was touched)")
    need_terminal(yes)
    args = {
        "confirm": list(confirm),
        "microsoft": microsoft,
        "tpm_eventlog": tpm_eventlog,
        "firmware_builtin": list(firmware_builtin),
    }
    _, book, runner = _runner(g, "secureboot.enroll", args, ",".join(hosts), yes=yes)
    _plan_and_apply(g, book, runner, yes, "Write these keys into firmware?", "secureboot enroll")


@secureboot.command(
    help="Move HOSTs' keys from /etc/secureboot to /var/lib/sbctl with `sbctl setup --migrate` (where "
    "nixpkgs' sbctl says 'old configuration detected'), then replan the backup and the lanzaboote "
    "module, which must follow the move, and show that plan. Needs a verified backup first."
    + examples("infratool secureboot migrate snix", "infratool secureboot migrate snix --yes")
)
@click.argument("hosts", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@pass_globals
def migrate(g: Globals, hosts: tuple[str, ...], yes: bool) -> None:
    from infratool.cli import output as render

    need_terminal(yes)
    limit = ",".join(hosts)
    _, book, runner = _runner(g, "secureboot.migrate", {}, limit, yes=yes)
    out, the_plan, result = _plan_confirm_apply(
        g, book, runner, yes, "Migrate these keys?", "secureboot migrate"
    )
    if result is not None and not g.json:
        render.results(out, result)
    # What must follow the keys: planned afresh against the hosts as they are now.
    _, _, after = _tasks_runner(g, [("secureboot.backup", {}), ("secureboot.lanzaboote", {})], limit)
    with after, after.on_event:
        replan = after.plan()
    if g.json:
        emit_json(
            {"migrate": (result.to_dict() if result else the_plan.to_dict()), "replan": replan.to_dict()}
        )
    else:
        out.print("\nAfter the migration (apply with `infratool run playbooks/secureboot.yaml`):")
        render.plan(out, replan)
    code = result.exit_code if result is not None else (EXIT_FAILED if the_plan.failures else 0)
    sys.exit(code)
