"""The four contenders: how each is started on the same work with the same parallelism."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spec import Inputs

HERE = Path(__file__).resolve().parent


@dataclass
class Tool:
    """One contender: the command for a converge run and for a start-up probe."""

    key: str
    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    startup: list[str]
    """A command that only starts the tool (``--help``/``--version``/``import``)."""
    after: Callable[[], None] = field(default=lambda: None)
    """Run after each converge (outside the timing): clean up what the run left."""


def infratool_bin() -> Path:
    """The ``infratool`` console script of the interpreter running the benchmark."""
    return Path(sys.executable).parent / "infratool"


def make_tools(inputs: Inputs, peers_bin: Path, forks: int) -> list[Tool]:
    """All four tools for one lab (same hosts, key, known_hosts, forks)."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "INFRATOOL_"))}
    base_env["NO_COLOR"] = "1"
    control_dir = inputs.root / "ansible-cp"

    def close_ansible_masters() -> None:
        # ControlPersist keeps one ssh master per host alive after the run;
        # end them so the next run (of any tool) starts from cold like the others.
        for sock in control_dir.glob("*") if control_dir.is_dir() else []:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                capture_output=True,
                check=False,
            )

    return [
        Tool(
            "infratool",
            "infratool run --yes",
            [str(infratool_bin()), *infratool_args(inputs, forks)],
            inputs.root,
            {**base_env, "INFRATOOL_AUDIT_LOG": str(inputs.root / "audit.jsonl")},
            [str(infratool_bin()), "--help"],
        ),
        Tool(
            "fabric",
            "raw Fabric loop",
            [sys.executable, str(HERE / "fabric_loop.py"), str(inputs.fabric_spec)],
            inputs.root,
            base_env,
            [sys.executable, "-c", "import fabric"],
        ),
        Tool(
            "pyinfra",
            "pyinfra",
            [
                str(peers_bin / "pyinfra"),
                "-y",
                "--parallel",
                str(forks),
                inputs.pyinfra_inventory.name,
                inputs.pyinfra_deploy.name,
            ],
            inputs.root,
            base_env,
            [str(peers_bin / "pyinfra"), "--version"],
        ),
        Tool(
            "ansible",
            "ansible-core",
            [str(peers_bin / "ansible-playbook"), "playbook.yml"],
            inputs.ansible_dir,
            {
                **base_env,
                "ANSIBLE_CONFIG": str(inputs.ansible_dir / "ansible.cfg"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
                "ANSIBLE_NOCOLOR": "1",
            },
            [str(peers_bin / "ansible-playbook"), "--version"],
            close_ansible_masters,
        ),
    ]


def infratool_args(inputs: Inputs, forks: int) -> list[str]:
    """``infratool`` arguments for the bench playbook."""
    return [
        "-i",
        str(inputs.inventory),
        "run",
        str(inputs.infratool_playbook),
        "--yes",
        "--forks",
        str(forks),
    ]
