"""The one run sequence of the CLI: plan → render → confirm → apply → audit.

``run``, ``apply``, ``secrets rotate``/``set`` and the Secure Boot commands
all go through :func:`run_sequence`, so a plan is always shown before it is
applied, a declined confirmation always exits 1 with nothing touched (and
what planning issued, Vault leases, returned: :func:`abandon`), and
the audit log always gets a ``started`` record before the first change and
one ``finished`` record after. The caller builds the runner and reports the
result (each command has its own way of saying what happened).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from infratool.changes import Plan
from infratool.cli.common import Globals, audit_run, audit_started, emit_json, open_audit
from infratool.errors import EXIT_FAILED


@dataclass
class Outcome:
    """What the sequence did: the plan, and the result when it applied (None for a dry run)."""

    plan: Plan
    result: Any = None


def run_sequence(
    g: Globals,
    book: Any,
    runner: Any,
    *,
    command: str,
    yes: bool,
    question: str = "Apply these changes?",
    show_diff: bool = True,
    dry_run: bool = False,
    apply_empty: bool = True,
    saved: Plan | None = None,
    progress: Any = None,
    before_apply: Callable[[], None] | None = None,
) -> Outcome:
    """Plan (or load ``saved``), show, confirm, apply and audit, with ``runner``.

    ``dry_run`` stops after showing (and auditing) the plan. With nothing to
    change and not ``apply_empty``, the plan is returned without applying.
    A declined confirmation is audited, says "Nothing applied." and exits 1.
    ``progress`` (default: the runner's ``on_event`` when it is a context
    manager) is live while planning and applying. ``before_apply`` runs once
    the plan is confirmed, right before the first change (``secrets rotate``
    marks a git commit as owed there, so a crash is committed by the next run).
    """
    from infratool.cli import output as render

    open_audit(g)  # an unusable audit log is bad input: exit 3 before connecting
    if progress is None:
        progress = runner.on_event if hasattr(runner.on_event, "__enter__") else contextlib.nullcontext()
    out = render.console()
    with runner:
        try:
            with progress:
                the_plan = runner.plan() if saved is None else runner.load_saved(saved)
            if dry_run:
                audit_run(g, f"{command} --dry-run", book, the_plan)
                emit_json(the_plan.to_dict()) if g.json else render.plan(out, the_plan, show_diff=show_diff)
                abandon(book)
                return Outcome(the_plan)
            if not g.json:
                render.plan(out, the_plan, show_diff=show_diff)
            if not the_plan.changes and not apply_empty:
                audit_run(g, command, book, the_plan)
                abandon(book)
                return Outcome(the_plan)
            if the_plan.changes and not yes and not click.confirm(question, default=False):
                audit_run(g, f"{command} (declined)", book, the_plan)
                click.echo("Nothing applied.", err=True)
                sys.exit(EXIT_FAILED)
            if the_plan.changes:
                audit_started(g, command, book, the_plan)
            if before_apply is not None:
                before_apply()
        except BaseException:
            abandon(book)  # declined, refused, interrupted: nothing of this plan will be applied
            raise
        with progress:
            result = runner.apply(the_plan)
    audit_run(g, command, book, the_plan, result)
    return Outcome(the_plan, result)


def abandon(book: Any) -> None:
    """A plan of ``book`` that will not be applied: its tasks return what planning issued.

    A rotation task that drew a Vault lease while planning (``Planner.issued``)
    revokes it here (``Task.abandon``); the other tasks have nothing to return.
    Called when ``plan`` ends without ``-o``, for a dry run and a declined
    confirmation. A plan saved with ``-o`` keeps its leases: ``apply`` installs
    them, or they expire with their TTL (docs/secret-sources.md).
    """
    for invocation in book.invocations:
        give_back = getattr(invocation.task, "abandon", None)
        if give_back is not None:
            give_back()


def report(g: Globals, outcome: Outcome) -> None:
    """Print the result table (or the JSON result; the plan's JSON when nothing was applied)."""
    from infratool.cli import output as render

    if outcome.result is None:
        if g.json:
            emit_json(outcome.plan.to_dict())
        return
    emit_json(outcome.result.to_dict()) if g.json else render.results(render.console(), outcome.result)


def apply_and_exit(
    g: Globals,
    inv: Any,
    book: Any,
    runner: Any,
    repo: Any,
    command: str,
    yes: bool,
    show_diff: bool,
    saved: Any = None,
) -> None:
    """``run``/``apply``: the run sequence, then what follows any applied playbook; exits.

    The rotations it ran are recorded (``secrets status`` finds their playbook),
    the result reported, and in a git fleet repo ``repo`` commits (exit 1 if
    that fails and the run did not).
    """
    from infratool.cli import gitsync

    outcome = run_sequence(
        g,
        book,
        runner,
        command=command,
        yes=yes,
        show_diff=show_diff,
        saved=saved,
        before_apply=lambda: gitsync.start(repo),
    )
    remember_rotations(inv, book)
    report(g, outcome)
    sys.exit(outcome.result.exit_code or gitsync.finish(repo))


def remember_rotations(inv: Any, book: Any) -> None:
    """Record the playbook in the state of the rotations it ran, so `secrets status` finds them.

    After the run, whatever its outcome; a state file that cannot be updated
    is logged, never turned into the run's failure (the run already happened).
    Only a playbook with a rotating task (``Task.rotates``) can have begun one.
    """
    from infratool import log
    from infratool.errors import InfratoolError
    from infratool.tasks.configured import remember

    if not any(getattr(i.task, "rotates", False) for i in book.invocations):
        return
    try:
        remember(inv, Path(book.path))
    except InfratoolError as exc:
        log.get_logger("infratool.cli").warning("rotation playbook not recorded", error=str(exc))
