"""Which failures of a client's command against a builder's store are tried again.

Seen in CI (three clients checking one lab builder at once): the builder's
``nix-daemon --stdio`` logged "SQLite database '/nix/var/nix/db/db.sqlite'
is busy" and the client's ``nix store ping`` failed with only "unexpected
end-of-file". That race is not reproducible on demand, so the host here is
a stand-in that replays scripted results of ``HostContext.run``; what is
tested is the policy of :func:`store_run`, not Nix.
"""

from __future__ import annotations

import pytest

from infratool.remote import Result
from infratool.tasks.remote_builders import verify

EOF_LINE = "error: cannot open connection to remote store 'ssh-ng://nixremote@infratool-builder-snix': error: unexpected end-of-file"


class ScriptedHost:
    """Stand-in for a HostContext: ``run`` returns the next scripted result and records the command."""

    def __init__(self, *results: Result) -> None:
        self.results = list(results)
        self.commands: list[str] = []

    def run(
        self, command: str, check: bool = True, what: str | None = None, timeout: float | None = None
    ) -> Result:
        self.commands.append(command)
        return self.results.pop(0)


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(verify, "RETRY_PAUSES", (0, 0))


def test_a_dropped_connection_is_tried_again_and_the_success_counts():
    host = ScriptedHost(Result(1, "", EOF_LINE + "\n"), Result(0, "Store URL: ssh-ng://…\n", ""))
    assert verify.store_run(host, "nix store ping", "ping", 1).ok
    assert host.commands == ["nix store ping"] * 2


def test_a_busy_store_is_tried_again_until_the_pauses_run_out():
    busy = Result(1, "", "error: SQLite database '/nix/var/nix/db/db.sqlite' is busy\n")
    host = ScriptedHost(busy, busy, busy, Result(0, "", ""))
    result = verify.store_run(host, "nix store ping", "ping", 1)
    assert not result.ok and "is busy" in result.stderr
    assert len(host.commands) == 1 + len(verify.RETRY_PAUSES)


def test_any_other_failure_is_reported_at_once():
    refused = Result(1, "", "nixremote@infratool-builder-snix: Permission denied (publickey).\n" + EOF_LINE)
    host = ScriptedHost(Result(1, "", "error: builder for '/nix/store/…-check.drv' failed\n"))
    assert not verify.store_run(host, "nix-build", "build", 1).ok
    assert len(host.commands) == 1
    # ssh's own refusal ends in the same end-of-file line, and is final all the same.
    host = ScriptedHost(refused)
    assert "Permission denied" in verify.store_run(host, "nix store ping", "ping", 1).stderr
    assert len(host.commands) == 1


def test_a_problem_names_sshs_refusal_before_nixs_end_of_file():
    stderr = "nixremote@infratool-builder-snix: Permission denied (publickey).\n" + EOF_LINE + "\n"
    assert (
        verify.failure_line(stderr)
        == f"nixremote@infratool-builder-snix: Permission denied (publickey). ({EOF_LINE})"
    )
    assert verify.failure_line("warning: x\n" + EOF_LINE) == EOF_LINE
