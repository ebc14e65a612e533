"""``infratool completion SHELL``: the shell completion script (click's)."""

from __future__ import annotations

import sys

import click

from infratool.cli.common import examples

SHELLS = ("bash", "zsh", "fish")


@click.command(
    help="Print the shell completion script for SHELL (click's completion for `infratool`)."
    + examples(
        "infratool completion bash > /etc/bash_completion.d/infratool",
        'eval "$(infratool completion zsh)"            # in ~/.zshrc',
        "infratool completion fish > ~/.config/fish/completions/infratool.fish",
    )
)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    from infratool.cli import main

    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one click knows
    # Exactly what `_INFRATOOL_COMPLETE=<shell>_source infratool` prints.
    script = cls(main, {}, "infratool", "_INFRATOOL_COMPLETE").source()
    sys.stdout.write(script if script.endswith("\n") else script + "\n")
