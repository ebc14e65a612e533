"""The cache-key and builder-key rotation kinds: status rows and rotation tasks, without the lab.

A fleet repo in a temp dir (the shipped hosts.yaml and playbooks, a state
file with made-up ages); no host is contacted and nothing needs root.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from helpers import ROOT

from infratool import inventory
from infratool.rotation import state
from infratool.rotation.kinds import get_kind


@pytest.fixture
def fleet_repo(tmp_path):
    """A copy of the shipped fleet repo layout: hosts.yaml, known_hosts, playbooks/, secrets/."""
    for name in ("hosts.yaml", "known_hosts"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "playbooks", tmp_path / "playbooks")
    (tmp_path / "secrets").mkdir()
    return tmp_path


def aged(repo, **days: int | None) -> state.RotationState:
    """Write a state file where ``kind/name`` was last rotated ``days`` ago; return it as loaded."""
    with state.locked(state.state_path(repo / "secrets")) as records:
        for key, ago in days.items():
            entry = records.get(key.replace("__", "/").replace("_", "-"))
            entry.generation = 1
            entry.last_rotated = None if ago is None else state.utcnow() - timedelta(days=ago)
    return state.load_dir(repo / "secrets")


def test_builder_keys_show_age_max_age_and_due(fleet_repo):
    inv = inventory.load(fleet_repo / "hosts.yaml")
    records = aged(fleet_repo, builder_key__slax=100, builder_key__brix=3)
    rows = {r.name: r.to_dict() for r in get_kind("builder-key").status(inv, records)}
    assert sorted(rows) == ["brix", "nixtv-player", "slax"]
    assert rows["slax"]["age"] == "100d" and rows["slax"]["max_age"] == "90d" and rows["slax"]["due"]
    assert rows["brix"]["age"] == "3d" and not rows["brix"]["due"]
    # Never recorded (generated before ages were kept): due once, so it gets an age.
    assert rows["nixtv-player"]["age"] == "never" and rows["nixtv-player"]["due"]
    assert rows["slax"]["kind"] == "builder-key" and rows["slax"]["consumers"] == ["slax", "snix"]
    assert rows["slax"]["configured"].endswith("remote-builders.yaml:9")


def test_builder_key_rotation_task_rotates_what_was_asked(fleet_repo):
    inv = inventory.load(fleet_repo / "hosts.yaml")
    records = aged(fleet_repo, builder_key__slax=100, builder_key__brix=3, builder_key__nixtv_player=3)
    kind = get_kind("builder-key")
    forced = kind.rotate_task(inv, ["brix"], due=False, force=True, lock_wait=0)
    assert forced.name == "remote_builders.setup"
    entry = records.rotations
    assert forced._why_rotate("brix", entry["builder-key/brix"]) == "rotation requested"
    assert forced._why_rotate("slax", entry["builder-key/slax"]) is None  # not asked for
    due = kind.rotate_task(inv, None, due=True, force=False, lock_wait=0)
    assert due._why_rotate("slax", entry["builder-key/slax"]) == "it is older than 90d"
    assert due._why_rotate("brix", entry["builder-key/brix"]) is None
    assert kind.rotate_task(inv, ["snix"], due=False, force=True, lock_wait=0) is None  # not a client


def test_rotate_keys_in_a_playbook_rotates_only_when_due(fleet_repo):
    """``rotate_keys: true`` left in a playbook no longer rotates on every run."""
    inv = inventory.load(fleet_repo / "hosts.yaml")
    book = fleet_repo / "playbooks" / "remote-builders.yaml"
    book.write_text(book.read_text().replace("# rotate_keys: true", "rotate_keys: true\n      max_age: 30d"))
    records = aged(fleet_repo, builder_key__slax=31, builder_key__brix=29)
    [task] = get_kind("builder-key")._tasks(inv)
    assert task._why_rotate("slax", records.rotations["builder-key/slax"]) == "it is older than 30d"
    assert task._why_rotate("brix", records.rotations["builder-key/brix"]) is None


LEGACY = """\
version: 1
caches:
  snix-cache: {current: snix-cache-1, next: snix-cache-2, phase: drop-old,
               created: "2020-01-01T00:00:00Z", rotated: null}
"""


def test_cache_key_shows_age_max_age_and_due_and_rotates_on_request(fleet_repo):
    inv = inventory.load(fleet_repo / "hosts.yaml")
    records = aged(fleet_repo, cache_key__snix_cache=400)
    with state.locked(state.state_path(fleet_repo / "secrets")) as st:
        st.get("cache-key/snix-cache").extra = {"current": "snix-cache-3"}
    records = state.load_dir(fleet_repo / "secrets")
    kind = get_kind("cache-key")
    [row] = [r.to_dict() for r in kind.status(inv, records)]
    assert row["kind"] == "cache-key" and row["name"] == "snix-cache"
    assert row["age"] == "400d" and row["max_age"] == "365d" and row["due"]
    assert row["generation"] == 3 and row["consumers"] == ["snix", "slax", "brix", "nixtv-player"]
    task = kind.rotate_task(inv, ["snix-cache"], due=False, force=True, lock_wait=0)
    assert task.name == "binary_cache.rotate_key" and task.forced
    assert kind.rotate_task(inv, ["other-cache"], due=False, force=True, lock_wait=0) is None


def test_cache_key_progress_reads_the_old_state_file_and_the_engine_marks(fleet_repo):
    from infratool.tasks.binary_cache.keys import progress

    secrets = fleet_repo / "secrets"
    (secrets / ".binary-cache-state.yaml").write_text(LEGACY)
    old = progress(secrets, "snix-cache")
    # The old file named the phase being moved to: drop-old means resign is done.
    assert old.marker == "resign" and old.done == "resign" and not old.promoting
    assert old.entry.age() > timedelta(days=365)
    for mark, done in (
        ("stored", None),
        ("trust-new:config", None),
        ("resign:key", "trust-new"),
        ("drop-old", "drop-old"),
    ):
        with state.locked(state.state_path(secrets)) as st:
            st.get("cache-key/snix-cache").phase = mark
        now = progress(secrets, "snix-cache")  # the one state file wins over the old one
        assert now.done == done, mark
    with state.locked(state.state_path(secrets)) as st:
        st.get("cache-key/snix-cache").phase = "promoting"
    assert progress(secrets, "snix-cache").promoting
