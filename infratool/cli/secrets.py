"""``infratool secrets ...`` and ``infratool timer ...``: rotation, status, recovery, scheduling."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from infratool.cli.common import (
    Globals,
    audit_run,
    audit_started,
    emit_json,
    examples,
    forks_option,
    load_inventory,
    open_audit,
    pass_globals,
)
from infratool.errors import EXIT_CHANGES, EXIT_FAILED, InputError

POLICY_HELP = "Rotation policy, relative to the flake repo [default: secrets/rotation.yaml]."


def _policy(g: Globals, policy: str | None):
    from infratool.secrets.policy import load_policy
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
        "infratool secrets recover check",
    )
)
def secrets() -> None:
    """The secrets command group."""


@secrets.command(
    help="Every secret: age, max age, due?, consumers, last result. Exit 2 when any is due "
    "or failed (a reminder for scripts and timers)."
    + examples("infratool secrets status", "infratool --json secrets status --notify")
)
@click.option("--policy", metavar="FILE", help=POLICY_HELP)
@click.option("--notify", is_flag=True, help="Call the policy's notify command/URL for due secrets.")
@pass_globals
def status(g: Globals, policy: str | None, notify: bool) -> None:
    from infratool.notify import notify as send
    from infratool.secrets import state
    from infratool.tasks.secrets_rotation import format_age

    _, pol = _policy(g, policy)
    st = state.load(state.state_path(pol.root / "secrets"))
    rows: list[dict[str, Any]] = []
    for name, spec in pol.secrets.items():
        entry = st.get(name)
        age = entry.age()
        due = entry.is_due(spec.max_age)
        rows.append(
            {
                "name": name,
                "file": str(spec.file.relative_to(pol.root)) if spec.file.is_absolute() else str(spec.file),
                "generator": spec.generator,
                "age": format_age(age) if age is not None else "never",
                "age_seconds": int(age.total_seconds()) if age is not None else None,
                "max_age": format_age(spec.max_age) if spec.max_age else None,
                "due": due,
                "consumers": sorted({c.host for c in spec.consumers}),
                "status": entry.status,
                "generation": entry.generation,
                "last_result": entry.last_result,
                "last_error": entry.last_error,
            }
        )
    due_names = [r["name"] for r in rows if r["due"]]
    if notify and due_names:
        send(pol, "due", f"{len(due_names)} secret(s) due for rotation: {', '.join(due_names)}")
    if g.json:
        emit_json(rows)
    else:
        from rich.table import Table
        from rich.text import Text

        from infratool import render

        table = Table(title=f"Secrets of {pol.path}")
        for col in ("secret", "age", "max age", "due", "consumers", "status", "last result"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"],
                r["age"],
                r["max_age"] or "-",
                Text("DUE", style="bold yellow") if r["due"] else "no",
                ", ".join(r["consumers"]),
                Text(r["status"], style="red" if r["status"] != "ok" else "green"),
                r["last_error"] or r["last_result"] or "-",
            )
        render.console().print(table)
    if due_names or any(r["status"] != "ok" for r in rows):
        sys.exit(EXIT_CHANGES)


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
) -> None:
    from infratool import render
    from infratool.options import RunOptions
    from infratool.playbook import Invocation, Playbook
    from infratool.runner import Runner, plan_exit_code
    from infratool.tasks.base import Source
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY, RotateSecrets

    if sum(bool(x) for x in (names, due, all_)) != 1:
        raise InputError("name the secrets to rotate, or pass --due or --all (exactly one of these)")
    if not dry_run and not yes and not sys.stdin.isatty():
        raise InputError("stdin is not a terminal: refusing to prompt; pass --yes to rotate unattended")
    inv = load_inventory(g)
    args = {
        "policy": policy or DEFAULT_POLICY,
        "secrets": None,
        "notify": None,
        "names": list(names) or None,
        "due": due,
        "force": all_ or bool(names),
        "lock_wait": wait,
    }
    source = Source(file=inv.flake / (policy or DEFAULT_POLICY), line=None, params={})
    task = RotateSecrets(args, source, inv)
    book = Playbook(
        path=source.file,
        name="secrets rotate",
        description="",
        invocations=[
            Invocation(
                task=task, selections=("all",), playbook="secrets rotate", label="secrets_rotation.rotate"
            )
        ],
    )
    open_audit(g)  # an unusable audit log is bad input: exit 3 before connecting
    options = RunOptions(forks=forks, yes=yes, audit_log=g.audit_log, unattended=unattended)
    out = render.console()
    progress = render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
    with Runner(inv, book, options, on_event=progress) as runner:
        with progress:
            the_plan = runner.plan()
        if dry_run:
            audit_run(g, "secrets rotate --dry-run", book, the_plan)
            emit_json(the_plan.to_dict()) if g.json else render.plan(out, the_plan)
            sys.exit(plan_exit_code(the_plan, detailed=False))
        if not g.json:
            render.plan(out, the_plan)
        if the_plan.changes and not yes and not click.confirm("Rotate these secrets?", default=False):
            click.echo("Nothing rotated.", err=True)
            sys.exit(EXIT_FAILED)
        if the_plan.changes:
            audit_started(g, "secrets rotate", book, the_plan)
        with progress:
            result = runner.apply(the_plan)
    audit_run(g, "secrets rotate", book, the_plan, result)
    emit_json(result.to_dict()) if g.json else render.results(out, result)
    sys.exit(result.exit_code)


@secrets.group(
    help="The backup identity, derived from a BIP39 mnemonic kept on paper."
    + examples("infratool secrets recover init", "infratool secrets recover check < words.txt")
)
def recover() -> None:
    """The recover command group."""


@recover.command(
    "init",
    help="Make a new 24-word mnemonic (shown once, on the terminal: write it down), add its age "
    "recipient to .sops.yaml and re-encrypt every secrets file for it. A second init replaces "
    "the first backup recipient (after asking, or with --replace)."
    + examples(
        "infratool secrets recover init",
        "infratool secrets recover init --replace   # new words; the old ones stop working",
    ),
)
@click.option(
    "--to-stdout",
    is_flag=True,
    help="Print the words even when stdout is not a terminal (a file, a pipe, a log): on purpose only.",
)
@click.option("--replace", is_flag=True, help="Replace an existing backup recipient without asking.")
@pass_globals
def recover_init(g: Globals, to_stdout: bool, replace: bool) -> None:
    from infratool import scaffold
    from infratool.onboard.sopsrules import parse_rules
    from infratool.secrets import recovery
    from infratool.secrets.store import SopsStore

    # Where the words would go is checked first: refusing must leave everything as it was.
    if g.json:
        raise InputError(
            "recover init does not print its 24 words as JSON (output that is kept ends up in logs); "
            "run it without --json at a terminal"
        )
    if not to_stdout and not sys.stdout.isatty():
        raise InputError(
            "stdout is not a terminal: the 24 words would land in a file or a log. Run this at a "
            "terminal, or pass --to-stdout if that is really where they should go"
        )
    inv = load_inventory(g)
    secrets_dir = inv.flake / "secrets"
    config = secrets_dir / ".sops.yaml"
    if not config.exists():
        raise InputError(f"{config} not found: run `infratool init` first")
    listed = {r for rule in parse_rules(config.read_text(), config) for r in rule.recipients}
    old = recovery.recorded_recipient(secrets_dir, listed)
    if old is not None and not replace:
        question = (
            f"A backup recipient already exists ({old}). Replace it? Its words stop working: it is "
            "removed from .sops.yaml and every secrets file is re-encrypted without it"
        )
        if not sys.stdin.isatty():
            raise InputError(f"a backup recipient already exists ({old}); pass --replace to replace it")
        if not click.confirm(question, default=False):
            click.echo("Nothing changed.", err=True)
            sys.exit(EXIT_FAILED)
    words = recovery.new_mnemonic()
    _, recipient = recovery.derive_identity(words)
    scaffold.add_sops_recipient(config, recipient)
    if old is not None:
        scaffold.remove_sops_recipient(config, old)
    recovery.record_recipient(secrets_dir, recipient)
    store = SopsStore(secrets_dir)
    files = scaffold.sops_files(secrets_dir)
    for f in files:
        store.updatekeys(f)
    # The one place the words are shown: to the operator's terminal (or where --to-stdout says), once.
    click.echo("Write these 24 words on paper and keep them offline. They are shown only now:\n", err=True)
    click.echo(f"    {words.reveal()}\n")
    replaced = f"; the old backup recipient {old} was removed" if old else ""
    click.echo(
        f"backup recipient {recipient} added to {config}{replaced}; {len(files)} file(s) re-encrypted",
        err=True,
    )


@recover.command(
    "check",
    help="Prove the mnemonic's identity is a recipient of, and alone decrypts, every "
    "secrets file. Words come from a hidden prompt, or stdin when piped "
    "(never argv)."
    + examples("infratool secrets recover check", "infratool secrets recover check < /media/usb/words"),
)
@pass_globals
def recover_check(g: Globals) -> None:
    from infratool import scaffold
    from infratool.hidden import Secret
    from infratool.secrets import recovery
    from infratool.secrets.store import SopsStore

    inv = load_inventory(g)
    secrets_dir = inv.flake / "secrets"
    if sys.stdin.isatty():
        words = Secret(click.prompt("Mnemonic (24 words)", hide_input=True))
    else:
        words = Secret(sys.stdin.read().strip())
    recovery.validate(words)
    files = scaffold.sops_files(secrets_dir)
    if not files:
        raise InputError(f"no sops files under {secrets_dir}")
    results = recovery.check(SopsStore(secrets_dir), files, words)
    if g.json:
        emit_json(
            [
                {"file": r.file, "listed": r.listed, "decrypts": r.decrypts, "ok": r.ok, "error": r.error}
                for r in results
            ]
        )
    else:
        for r in results:
            click.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.file}" + (f": {r.error}" if r.error else ""))
    bad = [r.file for r in results if not r.ok]
    if bad:
        click.echo(f"error: the backup identity cannot recover: {', '.join(bad)}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"the backup identity recovers all {len(results)} secrets file(s)", err=True)


# -- timer -------------------------------------------------------------------


def _timer_options(g: Globals, on_calendar: str, delay: str, age_key_file: str | None, flake: str | None):
    from infratool.inventory import resolve_path
    from infratool.scaffold import default_key_file
    from infratool.systemd import TimerOptions

    inventory = resolve_path(g.inventory).resolve()
    flake_dir = Path(flake).resolve() if flake else load_inventory(g).flake.resolve()
    return TimerOptions(
        flake=flake_dir,
        inventory=inventory,
        age_key_file=Path(age_key_file or default_key_file()),
        on_calendar=on_calendar,
        randomized_delay=delay,
    )


def _timer_params(f):
    f = click.option("--flake", metavar="DIR", help="Fleet repo [default: the inventory's flake].")(f)
    f = click.option(
        "--age-key-file", metavar="FILE", help="age identity for sops [default: sops's standard path]."
    )(f)
    f = click.option("--randomized-delay", default="1h", show_default=True, help="RandomizedDelaySec=.")(f)
    return click.option(
        "--on-calendar",
        default="daily",
        show_default=True,
        metavar="EXPR",
        help="systemd OnCalendar= expression.",
    )(f)


def _check_calendar(expr: str) -> None:
    import shutil
    import subprocess

    if shutil.which("systemd-analyze"):
        proc = subprocess.run(["systemd-analyze", "calendar", expr], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InputError(f"--on-calendar {expr!r} is not a valid systemd calendar expression")


@click.group(
    help="The scheduled rotation: a hardened systemd service + timer running "
    "`secrets rotate --due --yes`."
    + examples(
        "infratool timer render --on-calendar 'Sun 03:00'",
        "infratool timer render --nixos",
        "infratool timer install --dir /etc/systemd/system",
    )
)
def timer() -> None:
    """The timer command group."""


@timer.command(
    "render",
    help="Print the service and timer (or with --nixos, the NixOS module)."
    + examples("infratool timer render", "infratool timer render --nixos > rotation.nix"),
)
@_timer_params
@click.option("--nixos", is_flag=True, help="Print the equivalent NixOS module instead.")
@pass_globals
def timer_render(
    g: Globals,
    on_calendar: str,
    randomized_delay: str,
    age_key_file: str | None,
    flake: str | None,
    nixos: bool,
) -> None:
    from infratool.systemd import render_nixos_module, render_units

    _check_calendar(on_calendar)
    opts = _timer_options(g, on_calendar, randomized_delay, age_key_file, flake)
    if nixos:
        click.echo(render_nixos_module(opts), nl=False)
        return
    for text in render_units(opts).values():
        click.echo(text)


@timer.command(
    "install",
    help="Write the units into a directory (non-NixOS hosts); then "
    "`systemctl daemon-reload && systemctl enable --now infratool-rotate.timer`."
    + examples("infratool timer install", "infratool timer install --dir /tmp/units"),
)
@_timer_params
@click.option("--dir", "directory", default="/etc/systemd/system", show_default=True, type=click.Path())
@pass_globals
def timer_install(
    g: Globals,
    on_calendar: str,
    randomized_delay: str,
    age_key_file: str | None,
    flake: str | None,
    directory: str,
) -> None:
    from infratool.context import write_atomic
    from infratool.systemd import render_units

    _check_calendar(on_calendar)
    opts = _timer_options(g, on_calendar, randomized_delay, age_key_file, flake)
    for name, text in render_units(opts).items():
        write_atomic(Path(directory) / name, text.encode(), 0o644)
        click.echo(f"wrote {Path(directory) / name}")
    click.echo("now: systemctl daemon-reload && systemctl enable --now infratool-rotate.timer", err=True)
