"""Held commands (the run lock's holders) released together: every stdin closed before any wait.

The runner releases the run locks of all hosts with ``release_all``; it used
to close and await each lock in turn, a round trip per host. What is pinned
here is the order, not a duration: four held commands that each finish only
once all four stdins are closed finish under ``release_all``, and cannot
under one-by-one release.
"""

from __future__ import annotations

import pytest

from infratool import inventory
from infratool.remote import Remote, release_all

_WAITS_FOR_ALL = (
    "echo ready; cat >/dev/null; d=/var/lib/held-test/{tag}; mkdir -p $d; touch $d/{i}; n=0; "
    'while [ "$(ls $d | wc -l)" -lt 4 ]; do sleep 0.05; n=$((n + 1)); [ $n -lt 300 ] || exit 9; done'
)


@pytest.fixture
def remote(lab_factory):
    lab = lab_factory(1)
    host = next(iter(inventory.load(lab.inventory_path)))
    with Remote(host) as r:
        yield r


def _hold_four(remote: Remote, tag: str):
    return [
        remote.hold(_WAITS_FOR_ALL.format(tag=tag, i=i), lambda line: line == "ready", 30, f"held {i}")
        for i in range(4)
    ]


def test_release_all_closes_every_stdin_before_waiting(remote):
    held = _hold_four(remote, "together")
    release_all(held, timeout=30)
    assert [h.exit_status for h in held] == [0, 0, 0, 0]


def test_one_by_one_release_would_wait_on_the_first_host_alone(remote):
    # What the runner did before: the first release waits for a command that
    # needs the others' stdin closed too, so it runs out of time unfinished.
    held = _hold_four(remote, "in-turn")
    held[0].release(timeout=1)
    assert held[0].exit_status != 0  # closed unfinished (paramiko reports -1)
    release_all(held[1:], timeout=30)
