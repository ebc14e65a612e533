"""``infratool secrets check``: every consumer's verify with the current value (drift); rotates nothing.

The logic lives in :mod:`infratool.rotation.drift`; this module connects to
the consumer hosts, prints the findings, notifies, and picks the exit code.
"""

from __future__ import annotations

import sys

import click

from infratool.cli.common import Globals, emit_json, examples, forks_option, pass_globals
from infratool.errors import EXIT_FAILED, InputError

DEFAULT_POLICY = "secrets/rotation.yaml"


@click.command(
    "check",
    help="Drift check: run every consumer's verify with the secret's CURRENT value; rotate "
    "nothing. Exit 0 when every consumer accepts its value, 1 when any rejects it (or its host "
    "cannot be reached), naming the secret and the host; the policy's notify gets event `drift`."
    + examples(
        "infratool secrets check",
        "infratool secrets check postgres/app",
        "infratool --json secrets check",
    ),
)
@click.argument("names", nargs=-1)
@click.option("--policy", metavar="FILE", help="Rotation policy [default: secrets/rotation.yaml].")
@click.option(
    "--wait",
    type=float,
    default=60,
    show_default=True,
    help="Seconds to wait for a rotation holding a sops file's lock.",
)
@forks_option
@pass_globals
def check(g: Globals, names: tuple[str, ...], policy: str | None, wait: float, forks: int) -> None:
    from infratool.cli import output as render
    from infratool.cli.common import load_inventory, open_audit
    from infratool.options import RunOptions
    from infratool.playbook import Invocation, Playbook
    from infratool.rotation import drift
    from infratool.rotation.notify import notify
    from infratool.rotation.policy import load_policy, secret_names
    from infratool.runner import Runner
    from infratool.secrets.store import SopsStore
    from infratool.tasks.base import Source
    from infratool.tasks.secrets_check import ConsumerHosts

    inv = load_inventory(g)
    path = inv.flake / (policy or DEFAULT_POLICY)
    if not path.is_file():
        raise InputError(f"rotation policy {path} not found (see docs/secrets-rotation.md)")
    pol = load_policy(path, inv.names, root=inv.flake.resolve())
    wanted = set(secret_names(pol, names))
    selected = [s for n, s in pol.secrets.items() if not wanted or n in wanted]
    store = SopsStore(pol.root / "secrets")
    for file in {s.file for s in selected if s.file.is_file()}:
        store.read(file)  # a malformed or undecryptable file: exit 3 before any connection
    if not any(s.consumers for s in selected):
        raise InputError("no secret of the policy has a consumer: nothing to check", file=pol.path)
    book = Playbook(
        path=pol.path,
        name="secrets check",
        description="",
        invocations=[
            Invocation(
                task=ConsumerHosts({}, Source(file=path, line=None, params={}), inv, selected),
                selections=("all",),
                playbook="secrets check",
                label="secrets.check",
            )
        ],
    )
    open_audit(g)
    options = RunOptions(forks=forks, audit_log=g.audit_log)
    progress = render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
    with Runner(inv, book, options, on_event=progress) as runner:
        with progress:
            hosts = runner.gather()
        unreachable = {h: m for h, m in runner.failures.items() if h not in hosts}
        findings = drift.check(pol, store, hosts, unreachable, selected, lock_wait=wait, forks=forks)
    bad = [f for f in findings if f.failing]
    # Who checked what, and the verdicts (names and statuses; details are redacted by the log).
    open_audit(g).write(
        {
            "event": "finished",
            "run": g.run_id,
            "command": "secrets check",
            "policy": str(pol.path),
            "findings": [{"secret": f.secret, "host": f.host, "status": f.status} for f in findings],
            "exit_code": EXIT_FAILED if bad else 0,
        }
    )
    if bad:
        notify(pol, "drift", drift.summary(findings))
    if g.json:
        emit_json(
            {
                "drift": bool(bad),
                "findings": [
                    {"secret": f.secret, "host": f.host, "status": f.status, "detail": f.detail}
                    for f in findings
                ],
            }
        )
    else:
        from rich.text import Text

        colour = {"ok": "green", "unchecked": "yellow"}
        render.records(
            render.console(),
            f"Drift check of {pol.path}",
            [render.Column(c, keep=c != "detail") for c in ("secret", "host", "result", "detail")],
            [
                [f.secret, f.host, Text(f.status, style=colour.get(f.status, "bold red")), f.detail or "-"]
                for f in findings
            ],
        )
    for f in bad:
        click.echo(f"drift: {f.line()}", err=True)
    if bad:
        sys.exit(EXIT_FAILED)
    checked = sum(1 for f in findings if f.status == "ok")
    click.echo(f"no drift: {checked} consumer(s) accept their current value", err=True)
