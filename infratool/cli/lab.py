"""``infratool lab ...``: the local lab fleet of real sshd hosts."""

from __future__ import annotations

import os
from pathlib import Path

import click

from infratool.cli.common import Globals, emit_json, examples, pass_globals


@click.group(
    help="The local lab fleet: real sshd hosts in mount namespaces (needs root)."
    + examples(
        "infratool lab up", "infratool lab up --hosts 32", "infratool lab status", "infratool lab down"
    )
)
def lab() -> None:
    """Lab commands."""


def _lab():
    from infratool.lab.fleet import Lab

    return Lab(Path(os.environ.get("INFRATOOL_LAB_DIR") or ".infratool-lab"))


@lab.command("up", help="Start the lab hosts (idempotent) and write their inventory.")
@click.option(
    "--hosts",
    "count",
    type=click.IntRange(1, 200),
    default=None,
    help="Number of hosts (default: the four fleet hosts).",
)
@pass_globals
def lab_up(g: Globals, count: int | None) -> None:
    from infratool.lab.services import prepare_fleet

    the_lab = _lab()
    started = the_lab.up(count)
    key_file = prepare_fleet(the_lab)
    if g.json:
        emit_json([{"name": h.name, "address": h.address} for h in started])
    else:
        click.echo(f"{len(started)} lab host(s) up; inventory: {the_lab.inventory_path}")
        click.echo(f"operator age key: {key_file} (export SOPS_AGE_KEY_FILE={key_file})")


@lab.command("down", help="Stop every lab process (by pid).")
def lab_down() -> None:
    _lab().down()
    click.echo("lab down")


@lab.command("status", help="Show lab hosts and whether they run.")
@pass_globals
def lab_status(g: Globals) -> None:
    rows = _lab().status()
    if g.json:
        emit_json([vars(r) if hasattr(r, "__dict__") else r._asdict() for r in rows])
        return
    for r in rows:
        click.echo(f"{r.name:16} {r.address:15} {'running' if r.running else 'stopped'}")
