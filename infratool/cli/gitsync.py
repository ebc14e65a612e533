"""The git side of every command that rotates or re-encrypts: flags, the check before, the commit after.

``secrets rotate``/``set`` (and the timer), ``run``/``apply`` of a playbook
with a rotating task (``Task.rotates``), ``host add``/``host remove`` and
``secrets recover init`` all commit the same way: refused before anything is
touched on a dirty ``secrets/`` or a branch behind its upstream (exit 3), the
changes under ``secrets/`` (and the inventory, for the host commands)
committed after. The logic lives in :mod:`infratool.rotation.git`; this module
turns the flags and the policy's ``git:`` section into :class:`GitOptions`
and reports what happened (on stderr, so ``--json`` output on stdout stays
parseable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
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
    from infratool.rotation import state

    policy = task.policy
    state_file = state.state_path(policy.root / "secrets")
    return open_repo(
        task.inventory.flake, [*policy.files(), state_file], commit, push, policy.git, "secrets rotate"
    )


def open_repo(
    flake: Path,
    paths: Sequence[Path],
    commit: bool | None,
    push: bool | None,
    git: Any = None,
    command: str = "secrets rotate",
):
    """The fleet repo's session for ``command``, checked (exit 3 on dirty secrets/ or behind upstream).

    ``git``: the policy's ``git:`` section (default: read from the fleet's
    ``secrets/rotation.yaml`` if there is one, else commit without push).
    ``paths``: what the command writes besides ``secrets/``. None when the
    repo is not a git repository or commits are off.
    """
    from infratool.rotation.git import FleetGit, GitOptions, is_fleet_repo

    git = git if git is not None else fleet_git_policy(flake)
    if push is None:
        # The policy's push applies where there is git; only an explicit --push insists on it.
        push = git.push and is_fleet_repo(flake.resolve())
    options = GitOptions(commit=git.commit if commit is None else commit, push=push, author=git.author)
    session = FleetGit.open(flake, list(paths), options, command)
    if session is not None:
        session.preflight()
    return session


def fleet_git_policy(flake: Path) -> Any:
    """The ``git:`` section of the fleet's rotation policy (defaults when there is no policy).

    Read without checking host names: ``host remove`` runs while the policy
    still names the departing host.
    """
    from infratool.rotation.policy import GitPolicy, load_policy
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY

    path = flake / DEFAULT_POLICY
    if not path.is_file():
        return GitPolicy()
    return load_policy(path, None, root=flake.resolve()).git


def start(session: Any) -> None:
    """Right before anything is written: mark the rotation under way (crash → next run commits)."""
    if session is not None:
        session.start()


def finish(session: Any, message: tuple[str, str] | None = None) -> int:
    """Commit and push; say what happened; ``EXIT_FAILED`` when either failed.

    ``message``: subject and body for a change that is not a rotation (default:
    the rotated generations, from the state file).
    """
    if session is None:
        return EXIT_OK
    out = session.finish(message)
    if out.commit:
        click.echo(f"git: committed {out.commit} {out.subject}", err=True)
    if out.pushed:
        click.echo(f"git: pushed to {out.pushed}", err=True)
    if out.error:
        click.echo(f"error: git: {out.error}", err=True)
        return EXIT_FAILED
    return EXIT_OK


def open_for_inventory(inventory: Path, commit: bool | None, push: bool | None, command: str):
    """The checked session of a command that edits the inventory and re-encrypts (``host add/remove``).

    It commits ``secrets/`` (the re-encrypted files, ``.sops.yaml``) and the
    inventory when that is in the fleet repo; an inventory outside it (the
    lab's) is left to its owner.
    """
    from infratool.errors import InputError
    from infratool.inventory import load

    try:
        flake = load(inventory).flake
    except InputError:
        # A fresh or broken inventory: the host command itself says what is wrong with it.
        flake = Path(inventory).resolve().parent
    return open_repo(flake, [inventory, flake / "secrets" / ".sops.yaml"], commit, push, command=command)


def for_playbook(inv: Any, book: Any, git: tuple[bool | None, bool | None], command: str) -> Any:
    """A checked session for ``run``/``apply`` when the playbook rotates (``Task.rotates``), else None.

    Before planning, as ``secrets rotate`` does: a dirty ``secrets/`` or a branch
    behind its upstream refuses the run (exit 3) with nothing touched.
    """
    from infratool.errors import InputError
    from infratool.rotation import state

    if not any(getattr(i.task, "rotates", False) for i in book.invocations):
        if git[1]:
            raise InputError(f"--push: {book.path} rotates nothing, so there is nothing to commit")
        return None
    state_file = state.state_path(inv.flake / "secrets")
    return open_repo(inv.flake, [state_file], *git, command=command)
