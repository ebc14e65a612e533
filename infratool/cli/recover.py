"""``infratool secrets recover ...``: the backup identity from a BIP39 mnemonic kept on paper.

The words are made and checked by :mod:`infratool.secrets.recovery`; this
module decides where the words may be shown (a terminal, or ``--to-stdout`` on
purpose), edits ``.sops.yaml`` and re-encrypts. Registered in the ``secrets``
group by :mod:`infratool.cli.secrets`.
"""

from __future__ import annotations

import sys

import click

from infratool.cli.common import Globals, emit_json, examples, load_inventory, pass_globals
from infratool.cli.gitsync import git_options
from infratool.errors import EXIT_FAILED, InputError


@click.group(
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
@git_options
@pass_globals
def recover_init(
    g: Globals, to_stdout: bool, replace: bool, git_commit: bool | None, git_push: bool | None
) -> None:
    from infratool.cli import gitsync
    from infratool.onboard import scaffold
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
    # It re-encrypts every secrets file: in a git fleet repo, committed like a rotation
    # (refused here, before any word exists, on a dirty secrets/ or a branch behind upstream).
    repo = gitsync.open_repo(inv.flake, [], git_commit, git_push, command="secrets recover init")
    gitsync.start(repo)
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
    body = f"{len(files)} file(s) re-encrypted" + (f"; replaced {old}" if old else "")
    body += "\n\nCommitted by `infratool secrets recover init`; no value appears in this message."
    if gitsync.finish(repo, (f"secrets: backup recipient {recipient}", body)):
        sys.exit(EXIT_FAILED)


@recover.command(
    "check",
    help="Prove the mnemonic's identity is a recipient of, and alone decrypts, every "
    "secrets file. Words come from a hidden prompt, or stdin when piped "
    "(never argv)."
    + examples("infratool secrets recover check", "infratool secrets recover check < /media/usb/words"),
)
@pass_globals
def recover_check(g: Globals) -> None:
    from infratool.onboard import scaffold
    from infratool.secrets import recovery
    from infratool.secrets.secret import Secret
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
