"""``infratool timer ...``: render or install the scheduled-rotation units (see infratool/rotation/timer.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click

from infratool.cli.common import Globals, examples, load_inventory, pass_globals
from infratool.errors import InputError, RefusedError, SecretsError


def _timer_options(
    g: Globals, on_calendar: str, delay: str, age_key_file: str | None, flake: str | None, check: bool = False
):
    """The operator's choices, checked (exit 3 on anything unsafe for a unit)."""
    from infratool.inventory import resolve_path
    from infratool.onboard.scaffold import default_key_file
    from infratool.rotation.timer import TimerOptions, check_options

    inventory = resolve_path(g.inventory).resolve()
    flake_dir = Path(flake).resolve() if flake else load_inventory(g).flake.resolve()
    opts = TimerOptions(
        flake=flake_dir,
        inventory=inventory,
        # LoadCredential= takes an absolute path; a relative one would name a credential.
        age_key_file=Path(os.path.abspath(age_key_file or default_key_file())),
        on_calendar=on_calendar,
        randomized_delay=delay,
        check=check,
    )
    check_options(opts)
    _check_calendar(on_calendar)
    return opts


def _timer_params(f):
    f = click.option(
        "--check",
        is_flag=True,
        help="Also a daily drift check (`secrets check`): infratool-secrets-check.service + .timer.",
    )(f)
    f = click.option("--flake", metavar="DIR", help="Fleet repo [default: the inventory's flake].")(f)
    f = click.option(
        "--age-key-file", metavar="FILE", help="age identity for sops [default: sops's standard path]."
    )(f)
    f = click.option(
        "--randomized-delay",
        default="1h",
        show_default=True,
        metavar="SPAN",
        help="RandomizedDelaySec=: a systemd time span (30s, 15min, 1h).",
    )(f)
    return click.option(
        "--on-calendar",
        default="daily",
        show_default=True,
        metavar="EXPR",
        help="systemd OnCalendar= expression.",
    )(f)


def _check_calendar(expr: str) -> None:
    """Let systemd itself judge the calendar expression, where it is installed."""
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
    check: bool,
    nixos: bool,
) -> None:
    from infratool.rotation.timer import render_nixos_module, render_units

    opts = _timer_options(g, on_calendar, randomized_delay, age_key_file, flake, check)
    if nixos:
        click.echo(render_nixos_module(opts), nl=False)
        return
    for text in render_units(opts).values():
        click.echo(text)


@timer.command(
    "install",
    help="Write the units into a directory (non-NixOS hosts); then "
    "`systemctl daemon-reload && systemctl enable --now infratool-rotate.timer`. "
    "A unit that differs from what is rendered (edited locally, or rendered with other "
    "options) is shown as a diff and kept, unless --force; an existing file keeps its mode."
    + examples(
        "infratool timer install",
        "infratool timer install --dir /tmp/units",
        "infratool timer install --on-calendar 'Sun 03:00' --force",
    ),
)
@_timer_params
@click.option("--dir", "directory", default="/etc/systemd/system", show_default=True, type=click.Path())
@click.option("--force", is_flag=True, help="Replace units that differ from the rendered ones.")
@pass_globals
def timer_install(
    g: Globals,
    on_calendar: str,
    randomized_delay: str,
    age_key_file: str | None,
    flake: str | None,
    check: bool,
    directory: str,
    force: bool,
) -> None:
    from infratool.rotation.timer import plan_install, render_units, write_unit
    from infratool.secrets.sopsbin import find_sops

    opts = _timer_options(g, on_calendar, randomized_delay, age_key_file, flake, check)
    # The service cannot set sops's executable bit itself (read-only /usr, /opt): do it now.
    try:
        click.echo(f"sops: {find_sops()}", err=True)
    except SecretsError as exc:
        click.echo(f"warning: {exc}; the service needs sops to run", err=True)
    plans = plan_install(Path(directory), render_units(opts))
    edited = [p for p in plans if p.edited]
    for plan in edited:
        click.echo(plan.diff(), nl=False)
        if plan.note:
            click.echo(f"note: {plan.note}", err=True)
    if edited and not force:
        # Decided before anything is written: both units or neither.
        names = ", ".join(str(p.path) for p in edited)
        raise RefusedError(
            f"{names} differ(s) from the rendered unit (diff above); kept as is. Use --force to replace."
        )
    for plan in plans:
        if not plan.changed:
            click.echo(f"unchanged {plan.path}")
            continue
        write_unit(plan)
        click.echo(f"wrote {plan.path} (mode {plan.mode:04o})")
    timers = "infratool-rotate.timer" + (" infratool-secrets-check.timer" if check else "")
    click.echo(f"now: systemctl daemon-reload && systemctl enable --now {timers}", err=True)
