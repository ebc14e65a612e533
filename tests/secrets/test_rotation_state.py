"""Rotation state: round trip, atomic writes, redaction, validation with file:line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infratool.errors import InputError
from infratool.rotation import state as st
from infratool.secrets.secret import Secret

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_round_trip(tmp_path: Path) -> None:
    path = st.state_path(tmp_path)
    assert path == tmp_path / ".rotation-state.yaml"
    assert st.load(path).rotations == {}  # missing file: empty state
    state = st.RotationState()
    state.get("postgres/app").promoted(now=NOW)
    state.get("postgres/app").promoted(now=NOW + timedelta(days=1))
    state.get("cache/key").record("pending", "stored", phase="stored", now=NOW)
    state.get("builder/ssh").record("failed", "verify failed", "psql: login failed", now=NOW)
    st.save(path, state)
    loaded = st.load(path)
    assert loaded == state
    app = loaded.rotations["postgres/app"]
    assert (app.generation, app.status, app.last_rotated) == (2, "ok", NOW + timedelta(days=1))
    assert 'last_rotated: "2024-05-02T12:00:00Z"' in path.read_text().replace("'", '"')
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rotation-state.yaml"]


def test_errors_are_redacted_and_values_never_stored(tmp_path: Path) -> None:
    canary = Secret("CANARY-state-7f3a9c")
    state = st.RotationState()
    state.get("db/pw").record("failed", "verify failed", f"login with {canary.reveal()} refused")
    # Even if someone sets the field directly, saving redacts it.
    state.get("db/other").last_error = f"echo {canary.reveal()}"
    st.save(tmp_path / "s.yaml", state)
    text = (tmp_path / "s.yaml").read_text()
    assert "CANARY-state" not in text and "***" in text


def test_is_due() -> None:
    s = st.SecretState()
    assert s.is_due(timedelta(days=90), NOW)  # never rotated
    assert s.is_due(None, NOW)
    s.promoted(now=NOW)
    assert not s.is_due(timedelta(days=90), NOW + timedelta(days=89))
    assert s.is_due(timedelta(days=90), NOW + timedelta(days=90))
    assert not s.is_due(None, NOW + timedelta(days=9999))
    assert s.age(NOW + timedelta(hours=1)) == timedelta(hours=1)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("version: 1\nsecrets:\n  a:\n    status: weird\n", 3, "status must be one of"),
        ("version: 1\nsecrets:\n  a:\n    generation: -1\n", 3, "generation"),
        ("version: 1\nsecrets:\n  a:\n    last_rotated: yesterday\n", 3, "Invalid isoformat|bad state"),
        ("version: 1\nsecrets:\n  a:\n    colour: blue\n", 4, "unknown key 'colour' in the state of 'a'"),
        ("version: 3\nrotations: {}\n", 1, "unsupported rotation state version"),
        ("version: 2\nrotations:\n  secret/a:\n    checks: [x]\n", 3, "checks must map"),
        ("secrets: [1, 2]\n", 1, "'secrets' must be a mapping"),
        ("version: 1\nsecrets:\n  a: [\n", 4, "YAML syntax error"),
    ],
)
def test_malformed_state_names_file_and_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(body)
    with pytest.raises(InputError, match=message) as exc:
        st.load(path)
    assert exc.value.file == str(path) and exc.value.line == line


def test_unquoted_times_from_hand_edits_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("version: 1\nsecrets:\n  a:\n    last_rotated: 2024-05-01T12:00:00Z\n")
    assert st.load(path).rotations["secret/a"].last_rotated == NOW  # version 1: secrets by name


def test_time_helpers() -> None:
    assert st.format_time(NOW) == "2024-05-01T12:00:00Z"
    assert st.parse_time("2024-05-01T14:00:00+02:00") == NOW
    with pytest.raises(ValueError):
        st.format_time(datetime(2024, 1, 1))  # naive on purpose


# The rotation engine's own read-modify-write (engine.edit_state), run by real processes at once.
_SAVER = """
import sys
from pathlib import Path
from infratool.rotation import engine, state

key = state.key("secret", sys.argv[2])
for i in range(int(sys.argv[3])):
    with engine.edit_state(Path(sys.argv[1]).parent) as st:
        st.get(key).record("pending", f"step {i}", phase="stored")
with engine.edit_state(Path(sys.argv[1]).parent) as st:
    st.get(key).promoted()
"""


def test_concurrent_rotations_in_two_files_never_lose_a_state_update(tmp_path: Path) -> None:
    """Issue 13.10: secrets of two sops files (two rotation locks) save one state file at once.

    Without the state file's own lock each process wrote back the state it had
    read before the other's update, and one secret stayed "pending stored".
    """
    import subprocess
    import sys

    path = st.state_path(tmp_path)
    names = [f"db{i}/password" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _SAVER, str(path), name, "40"], stderr=subprocess.PIPE)
        for name in names
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    final = st.load(path)
    for name in names:
        entry = final.rotations.get(st.key("secret", name))
        assert entry is not None, f"{name}'s updates were lost"
        assert (entry.status, entry.generation, entry.last_result) == ("ok", 1, "rotated"), name
    # The rename left no temp file; only the state and its lock remain.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rotation-state.yaml", ".rotation-state.yaml.lock"]


def test_the_state_lock_is_not_followed_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    path = st.state_path(tmp_path)
    (tmp_path / ".rotation-state.yaml.lock").symlink_to(victim)
    with pytest.raises(InputError, match="symlink"), st.locked(path):
        pass
    assert victim.read_text() == "keep me\n" and not path.exists()


def test_one_file_for_every_kind_and_the_legacy_cache_file_is_folded_in(tmp_path: Path) -> None:
    """Version 2 keys every kind ``kind/name``; the old ``.binary-cache-state.yaml`` is read too."""
    state = st.RotationState()
    state.get(st.key("secret", "db/pw")).promoted(now=NOW)
    state.get(st.key("builder-key", "slax")).record("pending", "phase install done", phase="install", now=NOW)
    state.get(st.key("builder-key", "slax")).extra = {"next": "ssh-ed25519 AAAA"}
    st.save(st.state_path(tmp_path), state)
    (tmp_path / st.LEGACY_CACHE_FILE).write_text(
        "caches:\n  main:\n    current: main-2\n    next: main-3\n    phase: resign\n"
        '    created: "2024-04-01T12:00:00Z"\n    rotated: null\n'
    )
    loaded = st.load_dir(tmp_path)
    assert loaded.of_kind("secret")["db/pw"].generation == 1
    assert loaded.of_kind("builder-key")["slax"].extra == {"next": "ssh-ed25519 AAAA"}
    cache = loaded.of_kind("cache-key")["main"]
    assert (cache.phase, cache.status, cache.last_rotated) == ("resign", "pending", NOW - timedelta(days=30))
    assert cache.extra == {"current": "main-2", "next": "main-3"}
    # An entry written by the one engine wins over the legacy file's.
    state.get(st.key("cache-key", "main")).promoted(now=NOW)
    st.save(st.state_path(tmp_path), state)
    assert st.load_dir(tmp_path).of_kind("cache-key")["main"].phase is None
