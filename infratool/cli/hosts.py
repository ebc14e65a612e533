"""``hosts`` and ``facts``: the fleet as the inventory lists it and as each host reports it.

Loaded lazily by :class:`infratool.cli.InfratoolGroup` (``LAZY_COMMANDS``),
like every command module, so ``infratool --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from infratool.cli.common import (
    Globals,
    emit_json,
    examples,
    forks_option,
    limit_option,
    load_inventory,
    pass_globals,
    timeout_option,
)
from infratool.errors import EXIT_FAILED, EXIT_HOSTKEY, InfratoolError


@click.command(
    help="List hosts, their tags and (with --check) reachability."
    + examples("infratool hosts", "infratool hosts --check --limit 'tag:server'")
)
@click.option("--check", is_flag=True, help="Connect to each host (pinned key) and report.")
@limit_option
@forks_option
@timeout_option
@pass_globals
def hosts(g: Globals, check: bool, limit: str | None, forks: int, timeout: float | None) -> None:
    """``infratool hosts``: the inventory's hosts; with ``--check``, whether each answers."""
    inv = load_inventory(g)
    selected = inv.select(limit)
    status: dict[str, tuple[bool, str | None, int]] = {}
    if check:
        from concurrent.futures import ThreadPoolExecutor

        from infratool.errors import EXIT_OK
        from infratool.preflight import check_hosts
        from infratool.remote import Remote

        check_hosts(inv, selected)  # a missing ssh_key or a malformed pin: exit 3, nothing opened

        def probe(host) -> tuple[str, tuple[bool, str | None, int]]:
            try:
                with Remote(host, command_timeout=timeout) as r:
                    r.run("true", what="probe")
                return host.name, (True, None, EXIT_OK)
            except InfratoolError as exc:
                return host.name, (False, str(exc).removeprefix(f"{host.name}: "), exc.exit_code)

        with ThreadPoolExecutor(max_workers=forks) as pool:
            status = dict(pool.map(probe, selected))
    rows = [
        {
            "name": h.name,
            "address": h.address,
            "port": h.port,
            "user": h.user,
            "os": h.os,
            "system": h.system,
            "tags": list(h.tags),
            "pinned": len(h.host_keys) > 0,
            **({"reachable": status[h.name][0], "error": status[h.name][1]} if check else {}),
        }
        for h in selected
    ]
    if g.json:
        emit_json(rows)
    else:
        from rich.text import Text

        from infratool.cli import output as render

        columns = [
            render.Column("name", keep=True),
            render.Column("address", keep=True),
            render.Column("os"),
            render.Column("tags"),
            render.Column("pinned"),
        ]
        if check:
            columns += [render.Column("reachable", keep=True), render.Column("error")]
        table_rows = []
        for r in rows:
            cells: list = [
                r["name"],
                f"{r['address']}:{r['port']}",
                r["os"],
                ", ".join(r["tags"]),
                "yes" if r["pinned"] else "NO",
            ]
            if check:
                ok = r["reachable"]
                cells += [Text("yes" if ok else "no", style="green" if ok else "bold red"), r["error"] or ""]
            table_rows.append(cells)
        render.records(render.console(), None, columns, table_rows)
    codes = [code for _, _, code in status.values() if code]
    if codes:
        # A refused host key (4) says more than "unreachable" (1).
        sys.exit(EXIT_HOSTKEY if EXIT_HOSTKEY in codes else EXIT_FAILED)


@click.command(
    help="Gather and show facts per host (one round trip each)."
    + examples("infratool facts --limit snix", "infratool --json facts")
)
@limit_option
@forks_option
@pass_globals
def facts(g: Globals, limit: str | None, forks: int) -> None:
    """``infratool facts``: each host's gathered facts."""
    from infratool.options import RunOptions
    from infratool.playbook import Playbook
    from infratool.runner import Runner

    inv = load_inventory(g)
    selected = inv.select(limit)
    runner = Runner(inv, Playbook(inv.path, "facts", "", []), RunOptions(forks=forks, limit=limit))
    with runner:
        contexts = runner.gather(selected)
        data = {
            h.name: (
                contexts[h.name].facts.as_dict()
                if h.name in contexts
                else {"error": runner.failures.get(h.name)}
            )
            for h in selected
        }
    if g.json:
        emit_json({"hosts": data})  # under a key: host names never mix with version/command
    else:
        from infratool.cli import output as render

        con = render.console()
        for host, values in data.items():
            con.print(f"[bold]{host}[/bold]")
            for k, v in values.items():
                if k == "users":
                    v = f"{len(v)} users"
                con.print(f"  {k}: {v}")
    if runner.failures:
        sys.exit(4 if runner.refused else EXIT_FAILED)
