"""age key conversions, checked against PyNaCl, the bech32 package, age itself and sops."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import bech32
import nacl.bindings
import pyrage
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from infratool.errors import InputError
from infratool.secrets import agekeys
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore


def ref_bech32(hrp: str, data: bytes) -> str:
    return bech32.bech32_encode(hrp, bech32.convertbits(data, 8, 5))


def new_ssh_key(comment: str = "host") -> tuple[str, str, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}", key


def test_bech32_matches_the_reference_implementation() -> None:
    for n in (0, 1, 20, 32, 33):
        data = os.urandom(n)
        for hrp in ("age", "age-secret-key-"):
            encoded = agekeys.bech32_encode(hrp, data)
            assert encoded == ref_bech32(hrp, data)
            assert agekeys.bech32_decode(encoded) == (hrp, data)
            assert agekeys.bech32_decode(encoded.upper()) == (hrp, data)


def test_bech32_rejects_corruption_and_mixed_case() -> None:
    good = agekeys.bech32_encode("age", os.urandom(32))
    flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
    i = next(i for i, c in enumerate(good) if i > 4 and c.isalpha())
    mixed = good[:i] + good[i].upper() + good[i + 1 :]
    for bad in (flipped, mixed, "age1", "noseparator", good + "b"):
        with pytest.raises(ValueError):
            agekeys.bech32_decode(bad)


def test_ssh_public_key_to_recipient_matches_libsodium() -> None:
    for _ in range(25):
        _, public, key = new_ssh_key()
        raw = key.public_key().public_bytes_raw()
        expected = ref_bech32("age", nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw))
        assert agekeys.ssh_ed25519_to_age_recipient(public) == expected
        # known_hosts / ssh-keyscan lines work too
        assert agekeys.ssh_ed25519_to_age_recipient(f"brix.home.arpa {public}") == expected


def test_ssh_private_key_to_identity_matches_ssh_to_age_and_libsodium() -> None:
    for _ in range(10):
        private, public, key = new_ssh_key()
        seed = key.private_bytes_raw()
        ident = agekeys.ssh_ed25519_private_to_age_identity(Secret(private))
        # ssh-to-age: sha512(seed)[:32], not clamped
        assert ident.reveal() == ref_bech32("age-secret-key-", hashlib.sha512(seed).digest()[:32]).upper()
        clamped = agekeys.ssh_ed25519_private_to_age_identity(private, clamp=True)
        sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + key.public_key().public_bytes_raw())
        assert clamped.reveal() == ref_bech32("age-secret-key-", sk).upper()
        # Both are the same X25519 key: the recipient of the converted public key.
        recipient = agekeys.ssh_ed25519_to_age_recipient(public)
        assert agekeys.recipient_of(ident) == agekeys.recipient_of(clamped) == recipient
        assert str(pyrage.x25519.Identity.from_str(str(ident.reveal())).to_public()) == recipient


def test_keys_made_by_ssh_keygen_convert(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@x", "-f", key], check=True)
    recipient = agekeys.ssh_ed25519_to_age_recipient((tmp_path / "id_ed25519.pub").read_text())
    ident = agekeys.ssh_ed25519_private_to_age_identity(key.read_text())
    assert agekeys.recipient_of(ident) == recipient


def test_identity_from_bytes_and_recipient_agree_with_pyrage_and_age_keygen(tmp_path: Path) -> None:
    raw = os.urandom(32)
    ident = agekeys.x25519_identity_from_bytes(raw)
    assert str(ident.reveal()).startswith("AGE-SECRET-KEY-1")
    assert agekeys.identity_bytes(ident) == raw
    recipient = agekeys.recipient_of(ident)
    assert str(pyrage.x25519.Identity.from_str(str(ident.reveal())).to_public()) == recipient
    keyfile = tmp_path / "k.txt"
    keyfile.write_text(f"{ident.reveal()}\n")
    out = subprocess.run(["age-keygen", "-y", keyfile], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == recipient
    assert agekeys.parse_recipient(recipient) == agekeys.bech32_decode(recipient)[1]


def test_sops_file_for_converted_recipient_decrypts_with_converted_identity(tmp_path: Path) -> None:
    private, public, _ = new_ssh_key("host-key")
    recipient = agekeys.ssh_ed25519_to_age_recipient(public)
    ident = agekeys.ssh_ed25519_private_to_age_identity(private)
    (tmp_path / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\\.yaml$\n    age: {recipient}\n"
    )
    (tmp_path / "home").mkdir()
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home")}
    # Encrypting needs no identity at all: only the converted recipient from .sops.yaml.
    SopsStore(tmp_path, env=base).write("host.yaml", {"svc/token": Secret("host-only-value")})
    store = SopsStore(tmp_path, env={**base, "SOPS_AGE_KEY": str(ident.reveal())})
    assert store.read("host.yaml")["svc/token"] == Secret("host-only-value")
    assert store.recipients("host.yaml") == [recipient]


def test_bad_keys_are_input_errors_without_key_material(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    with pytest.raises(InputError, match="only ssh-ed25519"):
        agekeys.ssh_ed25519_private_to_age_identity(rsa_pem)
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", key], check=True)
    with pytest.raises(InputError, match="passphrase") as exc:
        agekeys.ssh_ed25519_private_to_age_identity(key.read_text())
    assert "OPENSSH" not in str(exc.value)
    with pytest.raises(InputError, match="not an OpenSSH private key"):
        agekeys.ssh_ed25519_private_to_age_identity("garbage")
    rsa_pub = rsa_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    with pytest.raises(InputError, match="not an ssh-ed25519 public key"):
        agekeys.ssh_ed25519_to_age_recipient(rsa_pub.decode())
    blob = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x05short").decode()
    with pytest.raises(InputError, match="malformed"):
        agekeys.ssh_ed25519_to_age_recipient(f"ssh-ed25519 {blob}")
    # y = 1 is the identity point: refused instead of yielding the all-zero recipient.
    identity_point = (1).to_bytes(32, "little")
    with pytest.raises(InputError, match="identity point"):
        agekeys.ed25519_public_to_x25519(identity_point)
    # y = 2 is not on the curve (no x exists for it).
    with pytest.raises(InputError, match="not on the curve"):
        agekeys.ed25519_public_to_x25519((2).to_bytes(32, "little"))
    with pytest.raises(InputError):
        agekeys.recipient_of("AGE-SECRET-KEY-1NOTVALID")
    with pytest.raises(InputError):
        agekeys.x25519_identity_from_bytes(b"short")
