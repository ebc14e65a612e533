"""Generators: formats checked by the real tools that consume them (ssh-keygen, age, nix)."""

from __future__ import annotations

import base64
import os
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from infratool.errors import InputError
from infratool.secrets import generators
from infratool.secrets.generators import GENERATORS, generate, public_part
from infratool.secrets.secret import Secret


def test_password_defaults_and_alphabets() -> None:
    pw = generate("password").value.reveal()
    assert isinstance(pw, str) and len(pw) == 32
    assert set(pw) <= set(string.ascii_letters + string.digits)
    for _ in range(50):
        sym = str(generate("password", {"length": 8, "alphabet": "alnum+symbols"}).value.reveal())
        assert len(sym) == 8 and set(sym) <= set(string.ascii_letters + string.digits + "-_.~")
        # every class present, so "needs a symbol/digit" password rules always pass
        assert any(c in "-_.~" for c in sym) and any(c.isdigit() for c in sym)
        assert any(c.islower() for c in sym) and any(c.isupper() for c in sym)
    low = str(generate("password", {"length": 100, "alphabet": "lower+digits"}).value.reveal())
    assert set(low) <= set(string.ascii_lowercase + string.digits)
    assert len({str(generate("password").value.reveal()) for _ in range(20)}) == 20
    assert public_part("password", Secret("whatever-pw")) is None


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("password", {"length": 4}, "between 8 and 4096"),
        ("password", {"length": True}, "must be int"),
        ("password", {"length": "40"}, "must be int"),
        ("password", {"alphabet": "emoji"}, "must be one of"),
        ("password", {"lenght": 40}, "no parameter 'lenght'"),
        ("hex", {"bytes": 2}, "between 8 and 1024"),
        ("base64", {"urlsafe": "yes"}, "must be bool"),
        ("ssh-ed25519", {"comment": "two\nlines"}, "one line"),
        ("age", {"anything": 1}, "no parameter"),
        ("nix-cache-key", {}, "needs parameter 'name'"),
        ("nix-cache-key", {"name": "bad:name"}, "must be non-empty"),
    ],
)
def test_bad_params_are_input_errors(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        generate(name, params)


def test_unknown_generator() -> None:
    with pytest.raises(InputError, match=r"unknown generator 'pasword'.*password"):
        generate("pasword")


def test_hex_and_base64() -> None:
    h = str(generate("hex").value.reveal())
    assert len(h) == 64 and bytes.fromhex(h)
    assert len(str(generate("hex", {"bytes": 16}).value.reveal())) == 32
    b = str(generate("base64", {"bytes": 48}).value.reveal())
    assert len(base64.b64decode(b, validate=True)) == 48
    u = str(generate("base64", {"bytes": 300, "urlsafe": True}).value.reveal())
    assert "+" not in u and "/" not in u and len(base64.urlsafe_b64decode(u)) == 300


def test_ssh_key_is_what_ssh_keygen_reads(tmp_path: Path) -> None:
    made = generate("ssh-ed25519", {"comment": "builder@slax"})
    assert made.public is not None and made.public.startswith("ssh-ed25519 AAAA")
    assert made.public.endswith(" builder@slax")
    key = tmp_path / "id"
    key.write_bytes(made.value.reveal_bytes())
    key.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", key], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == made.public  # ssh-keygen sees the same key and comment
    loaded = serialization.load_ssh_private_key(made.value.reveal_bytes(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert public_part("ssh-ed25519", made.value) == made.public
    # And the other way round: a key ssh-keygen made.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c@d", "-f", other], check=True)
    theirs = (tmp_path / "other.pub").read_text().strip()
    assert generators.public_from_private(other.read_text()) == theirs


def test_age_identity_encrypts_and_decrypts_with_age(tmp_path: Path) -> None:
    made = generate("age")
    assert str(made.value.reveal()).startswith("AGE-SECRET-KEY-1")
    assert made.public is not None and made.public.startswith("age1")
    assert public_part("age", made.value) == made.public
    keyfile = tmp_path / "k"
    keyfile.write_bytes(made.value.reveal_bytes() + b"\n")
    enc = subprocess.run(["age", "-r", made.public], input=b"hello age", capture_output=True, check=True)
    dec = subprocess.run(["age", "-d", "-i", keyfile], input=enc.stdout, capture_output=True, check=True)
    assert dec.stdout == b"hello age"


def test_nix_cache_key_format_and_round_trip_with_nix_store(tmp_path: Path) -> None:
    made = generate("nix-cache-key", {"name": "cache.example.org-1"})
    name, _, b64 = str(made.value.reveal()).partition(":")
    assert name == "cache.example.org-1" and len(base64.b64decode(b64)) == 64
    pname, _, pb64 = str(made.public).partition(":")
    assert pname == name and base64.b64decode(pb64) == base64.b64decode(b64)[32:]
    assert public_part("nix-cache-key", made.value) == made.public
    if not shutil.which("nix-store"):
        pytest.skip("nix-store not installed")
    sk, pk = tmp_path / "sk", tmp_path / "pk"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "theirs-1", sk, pk], check=True)
    assert generators.nix_public_key(sk.read_text()) == pk.read_text().strip()
    # A key whose public half does not match its seed is refused.
    raw = bytearray(base64.b64decode(sk.read_text().split(":", 1)[1]))
    raw[-1] ^= 1
    with pytest.raises(InputError, match="does not match"):
        generators.nix_public_key("theirs-1:" + base64.b64encode(bytes(raw)).decode())
    with pytest.raises(InputError, match="not a Nix signing key"):
        generators.nix_public_key("no-colon-here")


def _nix(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "--option",
            "substituters",
            "",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.skipif(
    not shutil.which("nix") or os.geteuid() != 0, reason="needs nix and root (a private chroot store)"
)
def test_nix_cache_key_signs_paths_that_nix_verifies(tmp_path: Path) -> None:
    made = generate("nix-cache-key", {"name": "infratool-test-1"})
    sk = tmp_path / "sk"
    sk.write_bytes(made.value.reveal_bytes())
    sk.chmod(0o600)
    other_sk, other_pk = tmp_path / "other-sk", tmp_path / "other-pk"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "other-1", other_sk, other_pk], check=True)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache-home")}
    # An input-addressed path, built in a private chroot store (locally built paths are
    # "ultimately trusted", so the signature is checked on a binary-cache copy).
    drv = tmp_path / "canary.nix"
    drv.write_text(
        'derivation { name = "canary"; system = builtins.currentSystem; builder = "/bin/sh";'
        f' args = ["-c" "echo {os.urandom(4).hex()} > $out"]; }}\n'
    )
    build = subprocess.run(
        # build-users-group empty: a fresh machine has no nixbld group, and root builds itself.
        ["nix-build", "--store", tmp_path / "store", "--option", "substituters", "",
         "--option", "build-users-group", "",
         "--option", "sandbox-paths", "/bin /lib /lib64 /usr", "--no-out-link", drv],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.skip(f"cannot build in a chroot store here: {build.stderr.strip()[-200:]}")
    path = build.stdout.strip()
    cache = tmp_path / "bincache"
    copy = _nix(
        "copy", "--from", tmp_path / "store", "--to", f"file://{cache}?secret-key={sk}", path, env=env
    )
    assert copy.returncode == 0, copy.stderr
    ok = _nix(
        "store", "verify", "--store", f"file://{cache}", "--trusted-public-keys", made.public, path, env=env
    )
    assert ok.returncode == 0, ok.stderr
    bad = _nix(
        "store", "verify", "--store", f"file://{cache}", "--trusted-public-keys",
        other_pk.read_text().strip(), path, env=env,
    )  # fmt: skip
    assert bad.returncode != 0 and "untrusted" in bad.stderr


def test_registry_is_complete() -> None:
    assert set(GENERATORS) == {
        "password",
        "hex",
        "base64",
        "ssh-ed25519",
        "age",
        "nix-cache-key",
        "wireguard",
        "command",
        "derive",
        "prompt",
        "vault",
    }
    for gen in GENERATORS.values():
        assert gen.doc and gen.name
