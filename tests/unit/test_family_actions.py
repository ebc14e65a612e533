"""The task families' actions take plain data: what an edited plan file can make them do.

A saved plan is data a person can edit. These actions run as root on a host,
so each checks the one argument that would turn it into something else,
before it runs anything (a recording stand-in for the host shows nothing ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infratool.changes import lookup
from infratool.errors import HostError, RefusedError
from infratool.inventory import Host


@dataclass
class Recorder:
    """A host context that records commands instead of running them."""

    host: Host = field(
        default_factory=lambda: Host(name="snix", address="127.0.0.1", flake=Path("/nonexistent"))
    )
    commands: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.host.name

    def run(self, command: str, **_: object) -> None:
        self.commands.append(command)
        raise AssertionError(f"ran {command!r}")


CACHE = {"name": "snix-cache", "url": "http://127.0.0.1", "port": 80, "store_dir": "/var/cache/nix"}


@pytest.mark.parametrize("path", ["/nix/store/abc; rm -rf /", "$(reboot)", "relative/path", "/nix/store/a b"])
def test_push_refuses_what_is_not_a_store_path(path):
    host = Recorder()
    with pytest.raises(HostError, match="not a store path"):
        lookup("binary_cache.push")(host, cache=CACHE, paths=["/nix/store/" + "a" * 32 + "-ok", path])
    assert host.commands == []


@pytest.mark.parametrize(
    "command",
    ["rm -rf /", "sbctl reset", "sbctl enroll-keys; reboot", "sbctl enroll-keys --ignore-immutable ; reboot"],
)
def test_enroll_runs_only_an_enrollment(command):
    host = Recorder()
    with pytest.raises(RefusedError, match="not an enrollment command"):
        lookup("secureboot.enroll")(
            host, command=command, directory="/var/lib/sbctl", expected={}, microsoft=True
        )
    assert host.commands == []


def test_the_enrollment_commands_the_task_makes_pass_the_check():
    from infratool.tasks.secureboot.enroll import _is_enroll_command, enroll_command

    for microsoft in (True, False):
        for tpm in (True, False):
            for builtin in ((), ("db",), ("KEK",), ("db", "KEK")):
                assert _is_enroll_command(enroll_command(microsoft, tpm, builtin))


def test_every_family_action_is_registered():
    for name in (
        "secureboot.create_keys",
        "secureboot.backup",
        "secureboot.restore",
        "secureboot.enroll",
        "secureboot.migrate",
        "remote_builders.check",
        "binary_cache.client_check",
        "binary_cache.push",
        "binary_cache.build_push",
    ):
        assert callable(lookup(name))
