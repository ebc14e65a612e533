"""``apply FILE`` (and ``run PLAYBOOK --plan FILE``): a saved plan, checked against what it was made for, applied.

The plan file's header must match the inventory, playbook, version and input
files now (:meth:`infratool.planfile.Header.mismatch`, exit 3); the secrets are
unsealed; the runner re-reads each host's facts and refuses the stale ones.
"""

from __future__ import annotations

from pathlib import Path

import click

from infratool.cli import gitsync
from infratool.cli.common import (
    Globals,
    examples,
    forks_option,
    load_inventory,
    need_terminal,
    open_audit,
    pass_globals,
    progress_display,
    timeout_option,
)
from infratool.cli.gitsync import git_options
from infratool.cli.playbooks import wait_option
from infratool.cli.sequence import apply_and_exit
from infratool.errors import InputError


@click.command(
    help="Apply exactly a plan saved with `plan -o FILE`: refused (exit 3) for another inventory, "
    "playbook or infratool version; hosts whose facts changed since the plan are refused (status "
    "stale, exit 5) and the others applied."
    + examples(
        "infratool plan playbooks/site.yaml -o site.plan.json",
        "infratool apply site.plan.json",
        "infratool apply site.plan.json --yes",
    )
)
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--yes", "-y", is_flag=True, help="Apply without asking (required when stdin is not a terminal)."
)
@forks_option
@click.option("--no-diff", is_flag=True, help="Descriptions only.")
@wait_option
@timeout_option
@git_options
@pass_globals
def apply(
    g: Globals,
    plan_file: Path,
    yes: bool,
    forks: int,
    no_diff: bool,
    lock_wait: float,
    timeout: float | None,
    git_commit: bool | None,
    git_push: bool | None,
) -> None:
    apply_saved(g, plan_file, None, yes, forks, not no_diff, lock_wait, timeout, (git_commit, git_push))


def apply_saved(
    g: Globals,
    plan_file: Path,
    playbook: str | None,
    yes: bool,
    forks: int,
    show_diff: bool,
    lock_wait: float,
    timeout: float | None,
    git: tuple[bool | None, bool | None] = (None, None),
) -> None:
    """`apply FILE` / `run PLAYBOOK --plan FILE`: check what the plan was made for, then apply it."""
    from infratool import planfile
    from infratool import playbook as pb
    from infratool.changes import Plan
    from infratool.options import RunOptions
    from infratool.runner import Runner
    from infratool.secrets.seal import unseal
    from infratool.template import parse_extra_vars

    loaded = planfile.load(plan_file)
    sel = loaded.header.selection
    inv = load_inventory(g)
    book = pb.load(playbook or loaded.header.playbook, inv, parse_extra_vars(sel.get("extra_vars") or ()))
    if sel.get("tags") or sel.get("skip_tags"):
        book = pb.filter_tags(book, sel.get("tags"), sel.get("skip_tags"))
    why = loaded.header.mismatch(planfile.Header.of(inv, book, sel))
    if why:
        raise InputError(f"refusing to apply this plan: {why}; make a new one", file=plan_file)
    need_terminal(yes)
    open_audit(g)
    repo = gitsync.for_playbook(inv, book, git, "apply")
    secrets = unseal(loaded.sealed, inv.flake / "secrets") if loaded.sealed else {}
    saved = Plan(
        hosts=loaded.plan.hosts,
        changes=planfile.changes_of(loaded, secrets),
        facts=loaded.plan.facts,
    )
    options = RunOptions(
        forks=forks,
        limit=sel.get("limit"),
        yes=yes,
        deploy=bool(sel.get("deploy", True)),
        command_timeout=timeout,
        lock_wait=lock_wait,
        audit_log=g.audit_log,
    )
    runner = Runner(inv, book, options, on_event=progress_display(g))
    apply_and_exit(g, inv, book, runner, repo, "apply", yes, show_diff, saved=saved)
