"""``infratool secrets check``: every consumer's verify with the current value (drift); rotates nothing.

The logic lives in :mod:`infratool.rotation.drift`; this module connects to
the consumer hosts, prints the findings, notifies, and picks the exit code.
"""

from __future__ import annotations

import sys

import click

from infratool.cli.common import Globals, emit_json, examples, forks_option, pass_globals
from infratool.errors import EXIT_FAILED, InputError


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
    from infratool.runner import Runner
    from infratool.secrets.store import SopsStore
    from infratool.tasks.base import Source
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY, RotateSecrets

    inv = load_inventory(g)
    args = {
        "policy": policy or DEFAULT_POLICY,
        "secrets": None,
        "notify": None,
        "names": list(names) or None,
        "due": False,
        "force": False,
        "lock_wait": wait,
    }
    # The rotation task validates the policy and the sops files (exit 3 before connecting)
    # and knows the consumer hosts; it is never planned or applied here.
    task = RotateSecrets(args, Source(file=inv.flake / args["policy"], line=None, params={}), inv)
    pol = task.policy
    selected = task.selected()
    if not any(s.consumers for s in selected):
        raise InputError("no secret of the policy has a consumer: nothing to check", file=pol.path)
    book = Playbook(
        path=pol.path,
        name="secrets check",
        description="",
        invocations=[
            Invocation(task=task, selections=("all",), playbook="secrets check", label="secrets.check")
        ],
    )
    open_audit(g)
    options = RunOptions(forks=forks, audit_log=g.audit_log)
    progress = render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
    with Runner(inv, book, options, on_event=progress) as runner:
        with progress:
            hosts = runner.gather()
        unreachable = {h: m for h, m in runner.failures.items() if h not in hosts}
        findings = drift.check(
            pol, SopsStore(pol.root / "secrets"), hosts, unreachable, selected, lock_wait=wait, forks=forks
        )
    bad = [f for f in findings if f.failing]
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
