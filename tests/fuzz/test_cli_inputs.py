"""Generated malformed inputs through the real CLI against a running lab: exit 3, file:line, no contact.

A few examples per kind (inventory, playbook, rotation policy, sops file): the
in-process fuzz tests cover breadth; these prove the whole path — the CLI maps
the error to exit 3 with the same ``file:line`` the parser found, prints no
traceback, and no lab host's sshd saw a connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from fuzzkit import text_mutation, write
from helpers import ROOT, SshdLogs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infratool_lab import Lab, services

from infratool import inventory, playbook
from infratool.errors import InputError
from infratool.rotation.policy import load_policy
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

BASELINE = ROOT / "playbooks" / "baseline.yaml"
ROTATION = ROOT / "playbooks" / "secrets-rotation.yaml"
FEW = settings(
    max_examples=2,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


def error_of(call: Callable[[], object]) -> InputError | None:
    """The InputError ``call`` raises (the in-process oracle), or None if the input is valid."""
    try:
        call()
    except InputError as exc:
        return exc
    return None


def assert_exit_3_at(result, err: InputError) -> None:
    """The CLI failed like the parser did: exit 3, ``error: file[:line]: message``, no traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == 3, out
    assert "Traceback" not in out
    where = f"{err.file}:{err.line}:" if err.line else f"{err.file}:"
    assert f"error: {where}" in result.stderr, (where, result.stderr)


@pytest.fixture
def rotation_fleet(fleet: Lab) -> Lab:
    """The lab with its rotation policy and an encrypted ``secrets/lab.yaml`` (services not started)."""
    services.write_policy(fleet)
    store = SopsStore(fleet.flake_dir / "secrets")
    store.write("lab.yaml", {"postgres/app": Secret("p" * 32), "tokend/token": Secret("t" * 48)})
    return fleet


@FEW
@given(data=st.data())
def test_malformed_inputs_exit_3_without_contacting_a_host(rotation_fleet: Lab, cli, tmp_path, data) -> None:
    lab = rotation_fleet
    before = SshdLogs(lab)
    inv = inventory.load(lab.inventory_path)
    policy_path = lab.flake_dir / "secrets" / "rotation.yaml"
    sops_path = lab.flake_dir / "secrets" / "lab.yaml"
    good_policy, good_sops = policy_path.read_text(), sops_path.read_text()

    # Inventory: a mutated copy of the lab's own.
    bad_inv = tmp_path / "hosts.yaml"
    text = data.draw(
        text_mutation(lab.inventory_path.read_text()).filter(
            lambda t: error_of(lambda: inventory.load(write(bad_inv, t))) is not None
        ),
        label="inventory",
    )
    err = error_of(lambda: inventory.load(write(bad_inv, text)))
    assert err is not None
    assert_exit_3_at(cli("-i", bad_inv, "plan", BASELINE), err)

    # Playbook: a mutated baseline.
    bad_pb = tmp_path / "playbook.yaml"
    text = data.draw(
        text_mutation(BASELINE.read_text()).filter(
            lambda t: error_of(lambda: playbook.load(write(bad_pb, t), inv)) is not None
        ),
        label="playbook",
    )
    err = error_of(lambda: playbook.load(write(bad_pb, text), inv))
    assert err is not None
    assert_exit_3_at(cli("-i", lab.inventory_path, "run", bad_pb, "--yes"), err)

    # Rotation policy, reached through the rotation playbook and `secrets rotate`.
    text = data.draw(
        text_mutation(good_policy).filter(
            lambda t: (
                error_of(lambda: load_policy(write(policy_path, t), inv.names, root=lab.flake_dir))
                is not None
            )
        ),
        label="policy",
    )
    err = error_of(lambda: load_policy(write(policy_path, text), inv.names, root=lab.flake_dir))
    assert err is not None
    assert_exit_3_at(cli("-i", lab.inventory_path, "run", ROTATION, "--yes"), err)
    policy_path.write_text(good_policy)

    # A sops file: mutated ciphertext, read by the real sops.
    store = SopsStore(lab.flake_dir / "secrets", env=dict(os.environ))

    def sops_error(t: str) -> InputError | None:
        write(sops_path, t)
        store.invalidate()
        return error_of(lambda: store.read("lab.yaml"))

    text = data.draw(text_mutation(good_sops).filter(lambda t: sops_error(t) is not None), label="sops")
    err = sops_error(text)
    assert err is not None
    assert_exit_3_at(cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--dry-run"), err)
    sops_path.write_text(good_sops)

    before.assert_no_contact()
