"""``infratool lab ...``: the local lab fleet of real sshd hosts."""

from __future__ import annotations

import os
from pathlib import Path

import click

from infratool.cli.common import Globals, emit_json, examples, pass_globals
from infratool.errors import InputError


def _require_lab() -> None:
    """The lab is a separate package (``lab/`` in the repository): say how to get it when missing."""
    try:
        import infratool_lab  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "infratool_lab":
            raise
        raise InputError(
            "the lab is not installed: it is the separate package infratool-lab "
            "(from a checkout: pip install -e ./lab, or run ./scripts/setup.sh)"
        ) from None


@click.group(
    help="The local lab fleet: real sshd hosts in mount namespaces (needs root)."
    + examples(
        "infratool lab up",
        "infratool lab up --nixos",
        "infratool lab up --hosts 32",
        "infratool lab status",
        "infratool lab down",
    )
)
def lab() -> None:
    """Lab commands."""


def _lab(subnet: str | None = None):
    _require_lab()
    from infratool_lab.fleet import Lab

    return Lab(Path(os.environ.get("INFRATOOL_LAB_DIR") or ".infratool-lab"), subnet=subnet)


@lab.command(
    "up",
    help="Start the lab hosts (idempotent), write their inventory and print the `export` lines "
    "that make the next commands use it."
    + examples(
        'eval "$(infratool lab up | grep ^export)"',
        "infratool lab up --subnet 127.0.5   # a second lab next to the first",
        "infratool lab up --nixos snix,slax   # NixOS-shaped snix and slax",
    ),
)
@click.option(
    "--hosts",
    "count",
    type=click.IntRange(1, 200),
    default=None,
    help="Number of hosts (default: the four fleet hosts).",
)
@click.option(
    "--subnet",
    metavar="A.B.C",
    default=None,
    help="Loopback subnet of the hosts (<subnet>.10, .11, ...) [default: the last one used, else 127.0.0].",
)
@click.option(
    "--nixos",
    "nixos",
    metavar="HOST,...",
    is_flag=False,
    flag_value="*",
    default=None,
    help="Make hosts NixOS-shaped (system profile, generations, switch-to-configuration, os: nixos): "
    "all with --nixos alone, or the named ones [default: as the last `lab up`].",
)
@pass_globals
def lab_up(g: Globals, count: int | None, subnet: str | None, nixos: str | None) -> None:
    import shlex

    from infratool_lab.services import prepare_fleet

    shaped: bool | list[str] | None = None
    if nixos == "*":
        shaped = True
    elif nixos is not None:
        shaped = [n.strip() for n in nixos.split(",") if n.strip()]
        if not shaped:
            raise InputError("--nixos takes host names separated by commas, like --nixos snix,slax")
    the_lab = _lab(subnet)
    started = the_lab.up(count, nixos=shaped)
    key_file = prepare_fleet(the_lab)
    inventory = the_lab.inventory_path.resolve()
    key = Path(key_file).resolve()
    if g.json:
        emit_json(
            {
                "hosts": [
                    {"name": h.name, "address": h.address, "os": "nixos" if h.nixos else "linux"}
                    for h in started
                ],
                "subnet": the_lab.subnet,
                "inventory": str(inventory),
                "age_key_file": str(key),
            }
        )
    else:
        click.echo(f"{len(started)} lab host(s) up on {the_lab.subnet}.x; inventory: {inventory}")
        click.echo(f"operator age key: {key}")
        click.echo(f"export INFRATOOL_INVENTORY={shlex.quote(str(inventory))}")
        click.echo(f"export SOPS_AGE_KEY_FILE={shlex.quote(str(key))}")


@lab.command(
    "down",
    help="Stop every lab process (by pid)."
    + examples("infratool lab down", "INFRATOOL_LAB_DIR=/tmp/lab2 infratool lab down"),
)
def lab_down() -> None:
    _lab().down()
    click.echo("lab down")


@lab.command(
    "status",
    help="Show lab hosts and whether they run."
    + examples("infratool lab status", "infratool lab status --json"),
)
@pass_globals
def lab_status(g: Globals) -> None:
    rows = _lab().status()
    if g.json:
        emit_json([vars(r) if hasattr(r, "__dict__") else r._asdict() for r in rows])
        return
    for r in rows:
        click.echo(f"{r.name:16} {r.address:15} {'running' if r.running else 'stopped'}")
