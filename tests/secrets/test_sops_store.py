"""SopsStore against the real sops binary, real age keys, one private repo per test."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infratool.errors import SecretsError, SecretsFileError
from infratool.secrets.secret import Secret
from infratool.secrets.sopsbin import find_sops
from infratool.secrets.store import SopsStore, sops_index


@dataclass
class Repo:
    """A fleet repo in a temp dir: .sops.yaml for one age key, and the env that holds the key."""

    root: Path
    identity: str
    recipient: str
    env: dict[str, str]
    tmpdir: Path
    log: Path
    wrapper: Path

    def store(self, **kw: object) -> SopsStore:
        return SopsStore(self.root, env=self.env, sops=self.wrapper, **kw)  # type: ignore[arg-type]

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def make_repo(tmp_path: Path, rules: str | None = None) -> Repo:
    """A repo whose sops calls go through a wrapper that logs each argv (for counting and canaries)."""
    root = tmp_path / "repo"
    (root / "secrets").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    tmpdir = tmp_path / "childtmp"
    tmpdir.mkdir()
    ident = pyrage.x25519.Identity.generate()
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(str(ident) + "\n")
    keyfile.chmod(0o600)
    recipient = str(ident.to_public())
    (root / ".sops.yaml").write_text(
        rules or f"creation_rules:\n  - path_regex: ^secrets/.*\\.yaml$\n    age: {recipient}\n"
    )
    log = tmp_path / "sops-argv.log"
    wrapper = tmp_path / "sops-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {find_sops()} "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # so sops finds no ~/.ssh or ~/.config key of the machine's
        "SOPS_AGE_KEY_FILE": str(keyfile),
        "TMPDIR": str(tmpdir),
    }
    return Repo(root, str(ident), recipient, env, tmpdir, log, wrapper)


@pytest.fixture
def sops_repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


def plain(values: dict[str, Secret]) -> dict[str, str]:
    return {k: str(v.reveal()) for k, v in values.items()}


def sops_decrypt(sops_repo: Repo, file: str) -> str:
    return subprocess.run(
        [find_sops(), "--disable-version-check", "decrypt", file],
        cwd=sops_repo.root,
        env=sops_repo.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_write_then_read_nested_keys_in_a_fresh_store(sops_repo: Repo) -> None:
    store = sops_repo.store()
    assert store.write(
        "secrets/app.yaml",
        {"postgres/app": Secret("pw-one-123"), "postgres/admin": Secret("pw-two-456"), "token": "t0k3n-abc"},
    )
    again = sops_repo.store()
    assert plain(again.read("secrets/app.yaml")) == {
        "postgres/app": "pw-one-123",
        "postgres/admin": "pw-two-456",
        "token": "t0k3n-abc",
    }
    # The same file, decrypted by sops itself, is the nested YAML sops-nix expects.
    assert "postgres:\n    app: pw-one-123\n    admin: pw-two-456\n" in sops_decrypt(
        sops_repo, "secrets/app.yaml"
    )
    # Values come back as Secrets: printing them prints nothing.
    assert "pw-one" not in repr(again.read("secrets/app.yaml"))


def test_set_adds_a_nested_key_keeping_the_others(sops_repo: Repo) -> None:
    store = sops_repo.store()
    store.write("secrets/app.yaml", {"a/b": Secret("first-value")})
    store.set("secrets/app.yaml", "a/c/d", Secret("second-value\nwith lines\n"))
    store.set("secrets/app.yaml", "a/b", Secret("first-changed"))
    assert plain(sops_repo.store().read("secrets/app.yaml")) == {
        "a/b": "first-changed",
        "a/c/d": "second-value\nwith lines\n",
    }
    # The store's own cache followed along without another decrypt.
    before = len(sops_repo.calls())
    assert plain(store.read("secrets/app.yaml"))["a/c/d"] == "second-value\nwith lines\n"
    assert len(sops_repo.calls()) == before


def test_cache_follows_changes_made_by_someone_else(sops_repo: Repo) -> None:
    mine, theirs = sops_repo.store(), sops_repo.store()
    mine.write("secrets/app.yaml", {"a": Secret("mine-value-1")})
    theirs.write("secrets/app.yaml", {"b": Secret("their-value")})
    mine.set("secrets/app.yaml", "c", Secret("mine-value-2"))
    expected = {"a": "mine-value-1", "b": "their-value", "c": "mine-value-2"}
    assert plain(mine.read("secrets/app.yaml")) == expected
    theirs.write("secrets/app.yaml", {"a": None})
    mine.write("secrets/app.yaml", {"d": Secret("mine-value-3")})  # re-reads: keeps their delete
    assert plain(sops_repo.store().read("secrets/app.yaml")) == {
        "b": "their-value",
        "c": "mine-value-2",
        "d": "mine-value-3",
    }


def test_set_creates_a_missing_file(sops_repo: Repo) -> None:
    store = sops_repo.store()
    store.set("secrets/new.yaml", "x/y", Secret("brand-new-value"))
    assert plain(sops_repo.store().read("secrets/new.yaml")) == {"x/y": "brand-new-value"}


# Strings that YAML 1.1 (PyYAML) and YAML 1.2 (sops's Go YAML) would read differently,
# or that need quoting: each must come back exactly as written.
TRICKY = [
    "yes", "on", "NO", "y", "0123", "0x1F", "1e3", "1_000", ".inf", "0o17", "+1", "-.5",
    "2024-01-01", "null", "~", "", " lead", "trail ", "l1\nl2\n", "\n", "x\n", "ü ☃",
    "a: b", "#x", "a #b", "'q'", '"dq"', "=", "<<", "- x", "? x", "@x", "`x", "%x", "!x",
    "&x", "*x", "|", ">", "\t tab", "{a: 1}", "[1, 2]", "x" * 500, "\x00", "a\x00b", "\x85",
    "x\x85y", "a\u2028b", "\ufeffx", "a\r\nb", "a\rb", "\x1b[31m", "\U0001f600", "  \n  ",
]  # fmt: skip


def test_tricky_values_round_trip_exactly(sops_repo: Repo) -> None:
    values = {f"v/k{i}": Secret(v) if v else v for i, v in enumerate(TRICKY)}
    sops_repo.store().write("secrets/tricky.yaml", values)
    back = plain(sops_repo.store().read("secrets/tricky.yaml"))
    assert back == {f"v/k{i}": v for i, v in enumerate(TRICKY)}


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), min_size=40, max_size=40))
def test_any_text_round_trips(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    sops_repo = make_repo(tmp_path_factory.mktemp("fuzz"))
    values = {f"k{i}": text for i, text in enumerate(texts)}
    sops_repo.store().write("secrets/fuzz.yaml", values)
    assert plain(sops_repo.store().read("secrets/fuzz.yaml")) == values


def test_non_string_leaves_read_as_sops_nix_writes_them(sops_repo: Repo) -> None:
    text = "n: 5\nf: 1.5\nb: true\nz: null\nl: [1, two]\nd:\n  e: x\n"
    enc = subprocess.run(
        [find_sops(), "--disable-version-check", "encrypt", "--filename-override", "secrets/t.yaml",
         "--input-type", "yaml", "--output-type", "yaml"],
        input=text, cwd=sops_repo.root, env=sops_repo.env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (sops_repo.root / "secrets/t.yaml").write_text(enc)
    assert plain(sops_repo.store().read("secrets/t.yaml")) == {
        "n": "5", "f": "1.5", "b": "true", "z": "", "l": '[1, "two"]', "d/e": "x",
    }  # fmt: skip


def test_write_keeps_comments_and_untouched_types(sops_repo: Repo) -> None:
    text = "# database credentials\ndb:\n  port: 5432  # not secret, but typed\n  password: old-password\n"
    enc = subprocess.run(
        [find_sops(), "--disable-version-check", "encrypt", "--filename-override", "secrets/c.yaml",
         "--input-type", "yaml", "--output-type", "yaml"],
        input=text, cwd=sops_repo.root, env=sops_repo.env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (sops_repo.root / "secrets/c.yaml").write_text(enc)
    sops_repo.store().write("secrets/c.yaml", {"db/password": Secret("new-password")})
    out = sops_decrypt(sops_repo, "secrets/c.yaml")
    assert "# database credentials" in out
    assert "port: 5432" in out  # still an int, not "5432"
    assert "password: new-password" in out


def test_read_is_one_sops_call_and_cached(sops_repo: Repo) -> None:
    sops_repo.store().write("secrets/a.yaml", {f"k{i}": Secret(f"value-{i:04d}") for i in range(20)})
    store = sops_repo.store()
    start = len(sops_repo.calls())
    assert len(store.read("secrets/a.yaml")) == 20
    assert len(store.read("secrets/a.yaml")) == 20
    assert store.get("secrets/a.yaml", "k7") == Secret("value-0007")
    calls = sops_repo.calls()[start:]
    assert len(calls) == 1 and " decrypt " in f" {calls[0]} "


def test_batch_write_uses_a_constant_number_of_sops_calls(sops_repo: Repo) -> None:
    def count(store: SopsStore, file: str, n: int) -> int:
        start = len(sops_repo.calls())
        fresh = os.urandom(4).hex()  # new values every time, so every write changes the file
        assert store.write(file, {f"batch/k{i}": Secret(f"value-{fresh}-{i:04d}") for i in range(n)})
        return len(sops_repo.calls()) - start

    # New file: one encrypt, whatever the key count.
    assert count(sops_repo.store(), "secrets/one.yaml", 1) == 1
    assert count(sops_repo.store(), "secrets/twenty.yaml", 20) == 1
    # Existing file, fresh store: one decrypt + one encrypt, whatever the key count.
    assert count(sops_repo.store(), "secrets/one.yaml", 1) == 2
    assert count(sops_repo.store(), "secrets/twenty.yaml", 20) == 2
    # Existing file already read by this store: just the encrypt.
    store = sops_repo.store()
    store.read("secrets/twenty.yaml")
    assert count(store, "secrets/twenty.yaml", 20) == 1
    assert len(sops_repo.store().read("secrets/twenty.yaml")) == 20


def test_write_without_changes_does_not_touch_the_file(sops_repo: Repo) -> None:
    store = sops_repo.store()
    store.write("secrets/a.yaml", {"a": Secret("same-value"), "b": Secret("other-value")})
    before = (sops_repo.root / "secrets/a.yaml").read_bytes()
    assert store.write("secrets/a.yaml", {"a": Secret("same-value"), "gone": None}) is False
    assert (sops_repo.root / "secrets/a.yaml").read_bytes() == before


def test_delete_keys_and_prune_empty_parents(sops_repo: Repo) -> None:
    store = sops_repo.store()
    store.write(
        "secrets/a.yaml", {"x/y/z": Secret("deep-value"), "x/w": Secret("kept-value"), "q/r": "gone-val"}
    )
    assert store.write("secrets/a.yaml", {"x/y/z": None, "q/r": None})
    assert plain(sops_repo.store().read("secrets/a.yaml")) == {"x/w": "kept-value"}
    assert "q:" not in sops_decrypt(sops_repo, "secrets/a.yaml")
    # Deleting everything leaves a valid, empty sops file.
    store.write("secrets/a.yaml", {"x/w": None})
    assert sops_repo.store().read("secrets/a.yaml") == {}


def test_write_is_atomic_keeps_mode_and_leaves_no_temp_files(sops_repo: Repo) -> None:
    store = sops_repo.store()
    path = sops_repo.root / "secrets/a.yaml"
    store.write("secrets/a.yaml", {"a": Secret("value-aaaaaa")})
    path.chmod(0o640)
    for change in (
        lambda: store.write("secrets/a.yaml", {"a": Secret("value-bbbbbb")}),
        lambda: store.set("secrets/a.yaml", "b", Secret("value-cccccc")),
    ):
        with open(path, "rb") as reader:
            old = path.read_bytes()
            change()
            # Replaced by rename, never rewritten in place: a reader that had the
            # file open still reads the complete old version.
            assert os.fstat(reader.fileno()).st_nlink == 0
            assert reader.read() == old
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.yaml"]


def test_key_conflicts_and_bad_keys_are_errors(sops_repo: Repo) -> None:
    store = sops_repo.store()
    store.write("secrets/a.yaml", {"a/b": Secret("scalar-value")})
    with pytest.raises(SecretsError, match="a/b is a value"):
        store.write("secrets/a.yaml", {"a/b/c": Secret("below-a-value")})
    with pytest.raises(SecretsError, match="mapping of secrets"):
        store.write("secrets/a.yaml", {"a": Secret("over-a-mapping")})
    for bad in ("", "a//b", "/a", 'a"b'):
        with pytest.raises(SecretsError, match="invalid secret key"):
            store.write("secrets/a.yaml", {bad: Secret("whatever-value")})
    assert sops_index("a/b c/d") == '["a"]["b c"]["d"]'


def _tamper(path: Path, pattern: str) -> None:
    text = path.read_text()
    m = re.search(pattern, text)
    assert m, pattern
    i = m.end()
    text = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    path.write_text(text)


def test_tampered_mac_is_reported_as_tampering(sops_repo: Repo) -> None:
    sops_repo.store().write("secrets/a.yaml", {"a": Secret("value-aaaaaa"), "b": Secret("value-bbbbbb")})
    path = sops_repo.root / "secrets/a.yaml"
    # Remove a whole value: every remaining value decrypts, but the MAC no longer matches.
    path.write_text(re.sub(r"(?m)^b: ENC\[.*\]\n", "", path.read_text()))
    with pytest.raises(SecretsFileError) as exc:
        sops_repo.store().read("secrets/a.yaml")
    assert "tampered" in str(exc.value) and "MAC" in str(exc.value)
    assert exc.value.file == "secrets/a.yaml" and str(exc.value).startswith("secrets/a.yaml")


def test_tampered_value_is_reported_as_tampering(sops_repo: Repo) -> None:
    sops_repo.store().write("secrets/a.yaml", {"a": Secret("value-aaaaaa")})
    _tamper(sops_repo.root / "secrets/a.yaml", r"a: ENC\[AES256_GCM,data:")
    with pytest.raises(SecretsFileError, match=r"secrets/a\.yaml: has been tampered with"):
        sops_repo.store().read("secrets/a.yaml")


def test_no_identity_is_a_clear_error(sops_repo: Repo) -> None:
    sops_repo.store().write("secrets/a.yaml", {"a": Secret("value-aaaaaa")})
    env = {k: v for k, v in sops_repo.env.items() if k != "SOPS_AGE_KEY_FILE"}
    store = SopsStore(sops_repo.root, env=env, sops=sops_repo.wrapper)
    with pytest.raises(SecretsFileError) as exc:
        store.read("secrets/a.yaml")
    assert str(exc.value).startswith("secrets/a.yaml: cannot decrypt: no matching age identity")
    assert "SOPS_AGE_KEY_FILE" in str(exc.value)
    # A wrong identity is the same error.
    wrong = {**env, "SOPS_AGE_KEY": str(pyrage.x25519.Identity.generate())}
    with pytest.raises(SecretsFileError, match="no matching age identity"):
        SopsStore(sops_repo.root, env=wrong, sops=sops_repo.wrapper).read("secrets/a.yaml")
    # Recipients are still readable without any identity.
    assert store.recipients("secrets/a.yaml") == [sops_repo.recipient]


def test_non_sops_and_malformed_files_name_the_file(sops_repo: Repo) -> None:
    (sops_repo.root / "secrets/plain.yaml").write_text("a: 1\n")
    (sops_repo.root / "secrets/broken.yaml").write_text("a: [1\n")
    store = sops_repo.store()
    with pytest.raises(SecretsFileError, match=r"^secrets/plain\.yaml: not a sops-encrypted file"):
        store.read("secrets/plain.yaml")
    with pytest.raises(SecretsFileError, match=r"^secrets/broken\.yaml"):
        store.read("secrets/broken.yaml")
    with pytest.raises(SecretsFileError, match=r"^secrets/plain\.yaml: not a sops"):
        store.recipients("secrets/plain.yaml")
    with pytest.raises(SecretsFileError, match=r"^secrets/missing\.yaml: secrets file not found"):
        store.read("secrets/missing.yaml")
    assert store.read("secrets/missing.yaml", missing_ok=True) == {}


def test_file_outside_the_creation_rules_is_an_error(sops_repo: Repo) -> None:
    with pytest.raises(SecretsFileError, match=r"^elsewhere/a\.yaml: no creation rule"):
        sops_repo.store().write("elsewhere/a.yaml", {"a": Secret("value-aaaaaa")})
    assert not (sops_repo.root / "elsewhere/a.yaml").exists()


def test_updatekeys_adds_a_new_recipient(sops_repo: Repo) -> None:
    sops_repo.store().write("secrets/a.yaml", {"a": Secret("value-for-two")})
    second = pyrage.x25519.Identity.generate()
    (sops_repo.root / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: ^secrets/.*\\.yaml$\n"
        f"    age: {sops_repo.recipient},{second.to_public()}\n"
    )
    store = sops_repo.store()
    store.updatekeys("secrets/a.yaml")
    assert sorted(store.recipients("secrets/a.yaml")) == sorted(
        [sops_repo.recipient, str(second.to_public())]
    )
    env = {
        **{k: v for k, v in sops_repo.env.items() if k != "SOPS_AGE_KEY_FILE"},
        "SOPS_AGE_KEY": str(second),
    }
    assert plain(SopsStore(sops_repo.root, env=env).read("secrets/a.yaml")) == {"a": "value-for-two"}


def _sample_cmdlines(stop: threading.Event, seen: list[bytes]) -> None:
    """Collect every process's argv, as `ps -eo args` would show it, until stopped."""
    while not stop.is_set():
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        seen.append(fh.read())
                except OSError:
                    pass


@pytest.fixture
def argv_watch() -> Iterator[list[bytes]]:
    seen: list[bytes] = []
    stop = threading.Event()
    thread = threading.Thread(target=_sample_cmdlines, args=(stop, seen), daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join()


def test_canary_never_in_argv_errors_or_files(sops_repo: Repo, argv_watch: list[bytes]) -> None:
    canary = "CANARY-" + os.urandom(8).hex()
    store = sops_repo.store()
    store.set("secrets/a.yaml", "svc/one", Secret(canary))  # creates the file (encrypt path)
    store.set("secrets/a.yaml", "svc/two", Secret(canary + "-2"))  # sops set --value-stdin path
    store.write("secrets/a.yaml", {"svc/three": Secret(canary + "-3")})
    assert plain(sops_repo.store().read("secrets/a.yaml"))["svc/one"] == canary

    errors: list[str] = []
    with pytest.raises(SecretsError) as exc:
        store.write("secrets/a.yaml", {"svc/one/deeper": Secret(canary)})
    errors.append(str(exc.value))
    _tamper(sops_repo.root / "secrets/a.yaml", r"two: ENC\[AES256_GCM,data:")
    for attempt in (
        lambda: sops_repo.store().set("secrets/a.yaml", "svc/four", Secret(canary)),
        lambda: sops_repo.store().write("secrets/a.yaml", {"svc/four": Secret(canary)}),
        lambda: sops_repo.store().read("secrets/a.yaml"),
    ):
        with pytest.raises(SecretsFileError, match="tampered") as exc:
            attempt()
        errors.append(str(exc.value) + repr(exc.value) + str(exc.value.__cause__))

    # argv: neither the wrapper's log of every sops call nor any process seen in /proc has it.
    assert sops_repo.calls() and not any(canary in call for call in sops_repo.calls())
    assert argv_watch and not any(canary.encode() in argv for argv in argv_watch)
    assert not any(canary in e for e in errors), errors
    # files: no plaintext anywhere under the test dir, and nothing left in the child's TMPDIR.
    assert list(sops_repo.tmpdir.iterdir()) == []
    for path in sops_repo.root.parent.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    assert sorted(p.name for p in (sops_repo.root / "secrets").iterdir()) == ["a.yaml"]


def test_encrypt_as_and_decrypt_as_round_trip_in_memory(sops_repo: Repo, argv_watch: list[bytes]) -> None:
    # What a saved plan's sealed secrets need: a document encrypted by the
    # creation rule of a file that is never written, through public methods.
    canary = "CANARY-" + os.urandom(8).hex()
    store = sops_repo.store()
    doc = f'{{"k": "{canary}"}}'.encode()
    sealed = store.encrypt_as("secrets/sealed.yaml", doc)
    assert canary.encode() not in sealed and b'"sops"' in sealed
    assert not (sops_repo.root / "secrets/sealed.yaml").exists()
    assert json.loads(sops_repo.store().decrypt_as("secrets/sealed.yaml", sealed)) == {"k": canary}
    assert not any(canary.encode() in argv for argv in argv_watch)
    with pytest.raises(SecretsFileError, match=r"no creation rule"):
        store.encrypt_as("elsewhere/sealed.yaml", doc)
    tampered = sealed.replace(sealed[sealed.index(b"ENC[") + 20 : sealed.index(b"ENC[") + 24], b"AAAA", 1)
    with pytest.raises(SecretsFileError, match="tampered"):
        store.decrypt_as("secrets/sealed.yaml", tampered)
