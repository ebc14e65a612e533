"""The git side of ``secrets rotate`` / ``secrets set``: flags, the check before, the commit after.

The logic lives in :mod:`infratool.rotation.git`; this module turns the
flags and the policy's ``git:`` section into :class:`GitOptions` and reports
what happened (on stderr, so ``--json`` output on stdout stays parseable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from infratool.errors import EXIT_FAILED, EXIT_OK


def git_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--commit/--no-commit`` and ``--push/--no-push`` (default: the policy's ``git:`` section)."""
    f = click.option(
        "--push/--no-push",
        "git_push",
        default=None,
        help="Push the commit to the branch's upstream [default: the policy's git.push, else no].",
    )(f)
    return click.option(
        "--commit/--no-commit",
        "git_commit",
        default=None,
        help="In a git fleet repo, commit the rotated sops files and state [default: yes].",
    )(f)


def begin(task: Any, commit: bool | None, push: bool | None):
    """Check the fleet repo before rotating (exit 3 on dirty secrets/ or behind upstream).

    Returns the session for :func:`start` and :func:`finish`, or None when
    the repo is not a git repository or commits are off.
    """
    from infratool.rotation.git import FleetGit, GitOptions, is_fleet_repo

    policy = task.policy
    flake = task.inventory.flake
    if push is None:
        # The policy's push applies where there is git; only an explicit --push insists on it.
        push = policy.git.push and is_fleet_repo(flake.resolve())
    options = GitOptions(
        commit=policy.git.commit if commit is None else commit,
        push=push,
        author=policy.git.author,
    )
    session = FleetGit.open(flake, [*policy.files(), task.state_file()], options)
    if session is not None:
        session.preflight()
    return session


def start(session: Any) -> None:
    """Right before anything is written: mark the rotation under way (crash → next run commits)."""
    if session is not None:
        session.start()


def finish(session: Any) -> int:
    """Commit and push; say what happened; ``EXIT_FAILED`` when either failed."""
    if session is None:
        return EXIT_OK
    out = session.finish()
    if out.commit:
        click.echo(f"git: committed {out.commit} {out.subject}", err=True)
    if out.pushed:
        click.echo(f"git: pushed to {out.pushed}", err=True)
    if out.error:
        click.echo(f"error: git: {out.error}", err=True)
        return EXIT_FAILED
    return EXIT_OK
