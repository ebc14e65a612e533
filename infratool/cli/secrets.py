"""``infratool secrets ...``: rotation, status, set (recover: cli/recover.py, check: cli/drift.py, the timer: cli/timer.py)."""

from __future__ import annotations

import sys
from typing import Any

import click

from infratool.cli.common import (
    Globals,
    emit_json,
    examples,
    forks_option,
    load_inventory,
    pass_globals,
)
from infratool.cli.gitsync import git_options
from infratool.errors import EXIT_CHANGES, InputError

POLICY_HELP = "Rotation policy, relative to the flake repo [default: secrets/rotation.yaml]."


def _policy(g: Globals, policy: str | None):
    from infratool.rotation.policy import load_policy
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY

    inv = load_inventory(g)
    path = inv.flake / (policy or DEFAULT_POLICY)
    if not path.exists():
        raise InputError(f"rotation policy {path} not found (see docs/secrets-rotation.md)")
    return inv, load_policy(path, inv.names, root=inv.flake.resolve())


@click.group(
    help="Secrets: status and reminders, staged rotation, recovery from the backup mnemonic."
    + examples(
        "infratool secrets status",
        "infratool secrets rotate --due --yes",
        "infratool secrets rotate postgres/app --dry-run",
        "infratool secrets set stripe/api-key",
        "infratool secrets recover check",
    )
)
def secrets() -> None:
    """The secrets command group."""


@secrets.command(
    help="Every rotation of every kind (secrets, cache signing keys, builder keys): age, max "
    "age, due?, targets, last result. Exit 2 when any is due or failed (a reminder for "
    "scripts and timers)." + examples("infratool secrets status", "infratool --json secrets status --notify")
)
@click.option("--policy", metavar="FILE", help=POLICY_HELP)
@click.option("--notify", is_flag=True, help="Call the policy's notify command/URL for due rotations.")
@pass_globals
def status(g: Globals, policy: str | None, notify: bool) -> None:
    from infratool.rotation import state
    from infratool.rotation.kinds import all_kinds, call_with_options
    from infratool.rotation.notify import notify as send
    from infratool.tasks.secrets_rotation import NEEDS_PERSON

    inv = load_inventory(g)
    st = state.load_dir(inv.flake / "secrets")
    opts = {"policy": policy}
    found = [row for k in all_kinds() for row in call_with_options(k.status, inv, st, options=opts)]
    if not found and not (inv.flake / "secrets").is_dir():
        raise InputError(f"no rotations: {inv.flake / 'secrets'} does not exist (run `infratool init`)")
    rows = [r.to_dict() for r in found]
    due_rows = [r for r in rows if r["due"]]
    if notify and due_rows:
        _, pol = _policy(g, policy)
        shown = [
            f"{_label(r)} ({NEEDS_PERSON}: infratool secrets set {r['name']})"
            if r["needs_person"]
            else _label(r)
            for r in due_rows
        ]
        send(pol, "due", f"{len(due_rows)} secret(s) due for rotation: {', '.join(shown)}")
    if g.json:
        emit_json(rows)
    else:
        from rich.text import Text

        from infratool.cli import output as render
        from infratool.tasks.secrets_rotation import DEFAULT_POLICY

        keep = ("secret", "due", "status")  # never cut: names and verdicts
        policy_path = inv.flake / (policy or DEFAULT_POLICY)
        render.records(
            render.console(),
            f"Secrets of {policy_path if policy_path.exists() else inv.flake / 'secrets'}",
            [
                render.Column(c, keep=c in keep)
                for c in ("secret", "age", "max age", "due", "consumers", "status", "last result")
            ],
            [
                [
                    _label(r),
                    r["age"],
                    r["max_age"] or "-",
                    _due_cell(r),
                    ", ".join(r["consumers"]),
                    Text(r["status"], style="red" if r["status"] != "ok" else "green"),
                    r["last_error"] or r["last_result"] or "-",
                ]
                for r in rows
            ],
        )
    if due_rows or any(r["status"] != "ok" for r in rows):
        sys.exit(EXIT_CHANGES)


def _label(row: dict[str, Any]) -> str:
    """A secret by its name (as in the policy); other kinds as ``kind/name``."""
    return row["name"] if row["kind"] == "secret" else f"{row['kind']}/{row['name']}"


def _due_cell(row: dict[str, Any]) -> Any:
    from rich.text import Text

    from infratool.tasks.secrets_rotation import NEEDS_PERSON

    if not row["due"]:
        return "no"
    return Text(NEEDS_PERSON if row["needs_person"] else "DUE", style="bold yellow")


@secrets.command(
    help="Rotate secrets, staged: pending in sops → deliver → verify → promote; any failed "
    "verify rolls every consumer back. Resumes a rotation a crash interrupted."
    + examples(
        "infratool secrets rotate --due --yes",
        "infratool secrets rotate postgres/app",
        "infratool secrets rotate --all --dry-run",
    )
)
@click.argument("names", nargs=-1)
@click.option("--due", is_flag=True, help="Only secrets past max_age (or never rotated).")
@click.option("--all", "all_", is_flag=True, help="Every secret of the policy, due or not.")
@click.option("--dry-run", is_flag=True, help="Show the plan only.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (required when stdin is not a terminal).")
@click.option("--policy", metavar="FILE", help=POLICY_HELP)
@click.option(
    "--wait",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to wait for another rotation holding the lock.",
)
@forks_option
@git_options
@click.option("--unattended", is_flag=True, hidden=True, help="Set by the timer.")
@pass_globals
def rotate(
    g: Globals,
    names: tuple[str, ...],
    due: bool,
    all_: bool,
    dry_run: bool,
    yes: bool,
    policy: str | None,
    wait: float,
    forks: int,
    unattended: bool,
    git_commit: bool | None,
    git_push: bool | None,
) -> None:
    from infratool.rotation.kinds import all_kinds, call_with_options

    if sum(bool(x) for x in (names, due, all_)) != 1:
        raise InputError("name the secrets to rotate, or pass --due or --all (exactly one of these)")
    if not dry_run and not yes and not sys.stdin.isatty():
        raise InputError("stdin is not a terminal: refusing to prompt; pass --yes to rotate unattended")
    inv = load_inventory(g)
    kinds = all_kinds()
    # `cache-key/main` names a rotation of that kind; any other name is a secret of the policy.
    wanted: dict[str, list[str]] = {}
    for name in names:
        kind, _, rest = name.partition("/")
        if kind != "secret" and rest and kind in {k.name for k in kinds}:
            wanted.setdefault(kind, []).append(rest)
        else:
            wanted.setdefault("secret", []).append(name)
    tasks = []
    for kind in kinds:
        if names and kind.name not in wanted:
            continue
        task = call_with_options(
            kind.rotate_task,
            inv,
            wanted.get(kind.name) or None,
            due=due,
            force=all_ or bool(names),
            lock_wait=wait,
            options={"policy": policy},
        )
        if task is not None:
            tasks.append(task)
    if not tasks:
        from infratool.tasks.secrets_rotation import DEFAULT_POLICY

        raise InputError(
            f"nothing rotates here: no rotation policy {inv.flake / (policy or DEFAULT_POLICY)} "
            "and no other kind of rotation configured (see docs/secrets-rotation.md)"
        )
    _run_rotation(
        g,
        inv,
        tasks,
        dry_run=dry_run,
        yes=yes,
        forks=forks,
        unattended=unattended,
        git=(git_commit, git_push),
    )


def _run_rotation(
    g: Globals,
    inv: Any,
    tasks: list[Any] | Any,
    *,
    dry_run: bool,
    yes: bool,
    forks: int,
    unattended: bool,
    command: str = "secrets rotate",
    git: tuple[bool | None, bool | None] = (None, None),
) -> None:
    """Plan, confirm and apply the rotation tasks (one per kind); exits with the run's code.

    Due ``prompt`` secrets that only a person can rotate are listed (and
    notified); with nothing else failing the exit code is then 2, not 0 or 1.
    """
    from infratool.cli import gitsync
    from infratool.cli import output as render
    from infratool.cli.sequence import report, run_sequence
    from infratool.options import RunOptions
    from infratool.playbook import Invocation, Playbook
    from infratool.rotation.notify import notify as send
    from infratool.runner import Runner, plan_exit_code
    from infratool.tasks.secrets_rotation import NEEDS_PERSON

    tasks = tasks if isinstance(tasks, list) else [tasks]  # `host remove --rotate` passes one
    book = Playbook(
        path=tasks[0].source.file,
        name="secrets rotate",
        description="",
        invocations=[
            Invocation(task=task, selections=("all",), playbook="secrets rotate", label=task.name)
            for task in tasks
        ],
    )
    # Due `prompt` secrets only a person can rotate (the secret kind's task says which).
    people = [t for t in tasks if getattr(t, "needs_person", None) is not None]
    # A git fleet repo: refuse on a dirty secrets/ or a branch behind upstream (exit 3) before anything.
    policed = next((t for t in tasks if hasattr(t, "state_file") and hasattr(t, "policy")), None)
    repo = gitsync.begin(policed, *git) if not dry_run and policed is not None else None
    options = RunOptions(forks=forks, yes=yes, audit_log=g.audit_log, unattended=unattended)
    progress = render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
    runner = Runner(inv, book, options, on_event=progress)
    # The one run sequence of the CLI (plan, show, confirm, apply, audit); a dry run or a
    # declined confirmation returns what planning issued (Vault leases) there.
    outcome = run_sequence(
        g,
        book,
        runner,
        command=command,
        yes=yes,
        question="Rotate these secrets?",
        dry_run=dry_run,
        before_apply=lambda: gitsync.start(repo),
    )
    if dry_run:
        needs = any([_skipped(t) for t in people])
        sys.exit(plan_exit_code(outcome.plan, detailed=False) or (EXIT_CHANGES if needs else 0))
    result = outcome.result
    report(g, outcome)
    needs = False
    for task in people:
        if _skipped(task):
            needs = True
            send(
                task.policy,
                "due",
                f"{', '.join(task.needs_person)}: {NEEDS_PERSON} (infratool secrets set NAME)",
            )
    git_code = gitsync.finish(repo)  # commit (and push) what the rotation changed
    sys.exit(result.exit_code or git_code or (EXIT_CHANGES if needs else 0))


run_rotation = _run_rotation
"""Plan, confirm, apply rotation tasks (``host remove --rotate`` runs its plan through this)."""


def _skipped(task: Any) -> bool:
    """Say which due secrets only a person can rotate; whether there were any."""
    from infratool.tasks.secrets_rotation import NEEDS_PERSON

    for name in task.needs_person:
        click.echo(f"skipped {name}: {NEEDS_PERSON} (run `infratool secrets set {name}`)", err=True)
    return bool(task.needs_person)


@secrets.command(
    "set",
    help="Give a `generator: prompt` secret its value, typed without echo (or piped with "
    "--stdin; never argv), then deliver and verify it like any rotation. Secrets derived from "
    "it are re-derived and delivered with it."
    + examples(
        "infratool secrets set stripe/api-key",
        "pass show stripe | infratool secrets set stripe/api-key --stdin",
    ),
)
@click.argument("name")
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read the value from stdin (one trailing newline dropped)."
)
@click.option("--policy", metavar="FILE", help=POLICY_HELP)
@forks_option
@git_options
@pass_globals
def set_(
    g: Globals,
    name: str,
    from_stdin: bool,
    policy: str | None,
    forks: int,
    git_commit: bool | None,
    git_push: bool | None,
) -> None:
    from infratool.secrets.secret import Secret
    from infratool.tasks.base import Source
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY, RotateSecrets

    inv, pol = _policy(g, policy)
    spec = pol.secrets.get(name)
    if spec is None:
        raise InputError(f"unknown secret {name!r}; the policy has: {', '.join(pol.secrets)}", file=pol.path)
    if not spec.needs_person:
        raise InputError(
            f"{name} is made by generator {spec.generator!r}, not typed: use `infratool secrets rotate {name}`",
            file=pol.path,
            line=spec.line,
        )
    if from_stdin:
        raw = sys.stdin.buffer.read()
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    elif sys.stdin.isatty():
        raw = click.prompt(f"Value for {name}", hide_input=True, confirmation_prompt=True).encode()
    else:
        raise InputError("stdin is not a terminal: pipe the value with --stdin (never as an argument)")
    if not raw.strip():
        raise InputError(f"no value given for {name}")
    if len(raw) < spec.params["min_length"]:
        # Refused here, before any connection, not half-way through a rotation.
        raise InputError(f"the value for {name} is shorter than min_length {spec.params['min_length']}")
    try:
        value = Secret(raw.decode())
    except UnicodeDecodeError:
        raise InputError(f"the value for {name} is not UTF-8 text") from None
    args = {
        "policy": policy or DEFAULT_POLICY,
        "secrets": None,
        "notify": None,
        "names": [name],
        "due": False,
        "force": True,
        "lock_wait": 0,
    }
    source = Source(file=inv.flake / (policy or DEFAULT_POLICY), line=None, params={})
    task = RotateSecrets(args, source, inv)
    task.provide(name, value)
    _run_rotation(
        g,
        inv,
        [task],
        dry_run=False,
        yes=True,
        forks=forks,
        unattended=False,
        command="secrets set",
        git=(git_commit, git_push),
    )


# `secrets recover` and `secrets check` (drift) live in their own modules; registered here, in
# this group.
from infratool.cli.drift import check as _drift_check  # noqa: E402
from infratool.cli.recover import recover as _recover  # noqa: E402

secrets.add_command(_drift_check)
secrets.add_command(_recover)
