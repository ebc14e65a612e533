"""Backup identity from a BIP39 mnemonic, and the recovery check against real sops files."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
from pathlib import Path

import bech32
import pyrage
import pytest

from infratool.errors import InputError
from infratool.secrets import recovery
from infratool.secrets.secret import Secret
from infratool.secrets.sopsbin import find_sops
from infratool.secrets.store import SopsStore

# BIP39 test vectors (all-zero and 0x7f entropy).
ABANDON_24 = "abandon " * 23 + "art"
LEGAL_12 = "legal winner thank year wave sausage worth useful legal winner thank yellow"
# Pinned: changing the derivation would orphan every backup already on paper.
ABANDON_24_RECIPIENT = "age1gghwzeagxtd07ea72dqvdwuecm3vtk3z57yt6rl6ayq4s67cnddsgx2y98"
LEGAL_12_RECIPIENT = "age10s852wcjqc37l6sfer3tf5r9cx37ygrfv2j95v2f3nlr0afzkcuqc2eyr3"


def by_hand(words: str) -> str:
    """The derivation as the module docstring tells a recovering operator to redo it."""
    norm = " ".join(unicodedata.normalize("NFKD", w) for w in words.lower().split())
    seed = hashlib.pbkdf2_hmac("sha512", norm.encode(), b"mnemonic", 2048)
    prk = hmac.new(b"infratool", seed, "sha256").digest()
    okm = hmac.new(prk, b"infratool backup age identity v1\x01", "sha256").digest()
    return bech32.bech32_encode("age-secret-key-", bech32.convertbits(okm, 8, 5)).upper()


def test_derivation_is_deterministic_documented_and_pinned() -> None:
    for words, recipient in ((ABANDON_24, ABANDON_24_RECIPIENT), (LEGAL_12, LEGAL_12_RECIPIENT)):
        ident, rec = recovery.derive_identity(Secret(words))
        assert ident.reveal() == by_hand(words)
        assert rec == recipient
        assert str(pyrage.x25519.Identity.from_str(str(ident.reveal())).to_public()) == recipient
        # Case and spacing do not matter; the same words give the same key.
        messy = "  " + "\n".join(w.upper() for w in words.split()) + " "
        assert recovery.derive_identity(messy) == (ident, rec)
    assert "PBKDF2-HMAC-SHA512" in (recovery.__doc__ or "")
    assert 'info = b"infratool backup age identity v1"' in (recovery.__doc__ or "")


def test_new_mnemonic_is_24_valid_words() -> None:
    words = recovery.new_mnemonic()
    assert str(words) == "***"
    assert len(str(words.reveal()).split()) == 24
    recovery.validate(words)
    assert recovery.new_mnemonic() != words


def test_bad_mnemonics_are_input_errors_that_do_not_echo_the_words() -> None:
    words = str(recovery.new_mnemonic().reveal()).split()
    cases = [
        ("abandon " * 24, "checksum"),  # the valid 24th word is "art"
        (" ".join(LEGAL_12.split()[::-1]), "checksum"),
        (" ".join([*words[:-1], "notaword"]), "word 24 "),
        (" ".join(words[:20]), "got 20"),
    ]
    for text, message in cases:
        with pytest.raises(InputError, match=message) as exc:
            recovery.validate(Secret(text))
        for word in set(text.split()):
            assert not re.search(rf"\b{re.escape(word)}\b", str(exc.value)), word


def _repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repo with two rules: secrets/ for operator + backup, other/ for the operator only."""
    root = tmp_path / "repo"
    (root / "secrets").mkdir(parents=True)
    (root / "other").mkdir()
    operator = pyrage.x25519.Identity.generate()
    _, backup = recovery.derive_identity(ABANDON_24)
    (root / ".sops.yaml").write_text(
        "creation_rules:\n"
        f"  - path_regex: ^secrets/.*\\.yaml$\n    age: {operator.to_public()},{backup}\n"
        f"  - path_regex: ^other/.*\\.yaml$\n    age: {operator.to_public()}\n"
    )
    return root, str(operator), backup


@pytest.fixture
def operator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The operator's key everywhere sops looks by default: env var and ~/.config/sops/age."""
    home = tmp_path / "home"
    (home / ".config/sops/age").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}


def test_check_passes_with_the_right_words(tmp_path: Path, operator_env: dict[str, str]) -> None:
    root, operator, _ = _repo(tmp_path)
    store = SopsStore(root, env={**operator_env, "SOPS_AGE_KEY": operator})
    store.write("secrets/a.yaml", {"db/pw": Secret("recoverable-1")})
    store.write("secrets/b.yaml", {"token": Secret("recoverable-2")})
    results = recovery.check(store, ["secrets/a.yaml", "secrets/b.yaml"], Secret(ABANDON_24))
    assert [(r.file, r.ok, r.error) for r in results] == [
        ("secrets/a.yaml", True, None),
        ("secrets/b.yaml", True, None),
    ]
    # Other words give another identity: listed nowhere, decrypts nothing.
    wrong = recovery.check(store, ["secrets/a.yaml"], Secret(LEGAL_12))
    assert not wrong[0].ok and not wrong[0].listed and "secrets/a.yaml" in str(wrong[0].error)


def test_check_fails_naming_files_the_backup_cannot_decrypt(
    tmp_path: Path, operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, operator, backup = _repo(tmp_path)
    # The operator's identity is in this process's env and in ~/.config/sops/age/keys.txt:
    # the check must not use it.
    monkeypatch.setenv("SOPS_AGE_KEY", operator)
    Path(operator_env["HOME"], ".config/sops/age/keys.txt").write_text(operator + "\n")
    store = SopsStore(root, env={**operator_env, "SOPS_AGE_KEY": operator})
    store.write("secrets/good.yaml", {"a": Secret("value-good-1")})
    store.write("other/op-only.yaml", {"a": Secret("value-oponly")})
    # A file that *claims* the backup recipient, but whose stanza is for another key:
    # only an identity other than the backup one could decrypt it.
    decoy = pyrage.x25519.Identity.generate()
    (root / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\\.yaml$\n    age: {pyrage.x25519.Identity.from_str(operator).to_public()},"
        f"{decoy.to_public()}\n"
    )
    store.write("secrets/decoy.yaml", {"a": Secret("value-decoy1")})
    path = root / "secrets/decoy.yaml"
    path.write_text(path.read_text().replace(str(decoy.to_public()), backup))
    assert backup in store.recipients("secrets/decoy.yaml")
    store.invalidate()
    assert store.read("secrets/decoy.yaml")["a"] == Secret("value-decoy1")  # the operator can

    log = tmp_path / "argv.log"
    wrapper = tmp_path / "sops"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {find_sops()} "$@"\n')
    wrapper.chmod(0o755)
    store = SopsStore(root, env={**operator_env, "SOPS_AGE_KEY": operator}, sops=wrapper)
    files = ["secrets/good.yaml", "other/op-only.yaml", "secrets/decoy.yaml"]
    results = {r.file: r for r in recovery.check(store, files, ABANDON_24)}

    assert results["secrets/good.yaml"].ok
    oponly = results["other/op-only.yaml"]
    assert not oponly.ok and not oponly.listed
    assert str(oponly.error).startswith("other/op-only.yaml:") and backup in str(oponly.error)
    decoy_result = results["secrets/decoy.yaml"]
    assert decoy_result.listed and not decoy_result.decrypts and not decoy_result.ok
    assert str(decoy_result.error).startswith("secrets/decoy.yaml: cannot decrypt")
    # The backup identity went to sops through the environment, never argv.
    ident, _ = recovery.derive_identity(ABANDON_24)
    assert log.read_text() and str(ident.reveal()) not in log.read_text()
    assert "AGE-SECRET-KEY" not in log.read_text()


def test_isolated_env_drops_operator_identities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", "/root/keys.txt")
    monkeypatch.setenv("SOPS_AGE_KEY_CMD", "pass age")
    monkeypatch.setenv("SOPS_AGE_SSH_PRIVATE_KEY_FILE", "/root/.ssh/id_ed25519")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/root/.config")
    ident, _ = recovery.derive_identity(ABANDON_24)
    env = recovery.isolated_env(ident, tmp_path)
    assert env["SOPS_AGE_KEY"] == ident.reveal()
    assert env["HOME"] == str(tmp_path) and env["XDG_CONFIG_HOME"] == str(tmp_path / ".config")
    for var in ("SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY_CMD", "SOPS_AGE_SSH_PRIVATE_KEY_FILE"):
        assert var not in env
