"""The backup age identity, derived from a BIP39 mnemonic kept on paper.

Every secrets file is encrypted to one extra recipient whose identity nobody
stores: it is recomputed from 24 words when the hosts' keys and the
operator's key are all lost. The derivation is fixed (``v1``) and uses only
standard pieces, so it can be redone by hand, without infratool:

1. Normalise the words: lower case, single spaces, NFKD (BIP39).
2. BIP39 seed, empty passphrase:
   ``seed = PBKDF2-HMAC-SHA512(password=words, salt=b"mnemonic", iterations=2048, dklen=64)``.
3. HKDF-SHA256 (RFC 5869) with ``salt = b"infratool"``,
   ``info = b"infratool backup age identity v1"``, length 32:
   ``prk = HMAC-SHA256(key=b"infratool", msg=seed)``;
   ``okm = HMAC-SHA256(key=prk, msg=info + b"\\x01")[:32]``.
4. ``okm`` is the X25519 secret key, used as is (age clamps when it uses it).
   The age identity is ``bech32(hrp="age-secret-key-", okm)`` in upper case;
   ``age-keygen -y`` on it prints the recipient.

In Python, with only the standard library::

    import hashlib, hmac, unicodedata
    words = " ".join(unicodedata.normalize("NFKD", w) for w in WORDS.lower().split())
    seed = hashlib.pbkdf2_hmac("sha512", words.encode(), b"mnemonic", 2048)
    prk = hmac.new(b"infratool", seed, "sha256").digest()
    okm = hmac.new(prk, b"infratool backup age identity v1\\x01", "sha256").digest()
    # bech32-encode okm with hrp "age-secret-key-" (any BIP173 implementation),
    # upper-case it, save it as keys.txt, and: SOPS_AGE_KEY_FILE=keys.txt sops decrypt FILE

:func:`check` proves, for each secrets file, that the backup recipient is
listed in its sops metadata and that the backup identity alone decrypts it.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infratool.errors import InputError, SecretsError
from infratool.secrets import agekeys
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

if TYPE_CHECKING:
    from mnemonic import Mnemonic

HKDF_SALT = b"infratool"
HKDF_INFO = b"infratool backup age identity v1"
WORD_COUNTS = (12, 15, 18, 21, 24)

# Variables that would let sops find an identity other than the backup one.
_IDENTITY_VARS = ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY_CMD", "SOPS_AGE_SSH_PRIVATE_KEY_FILE")


def _mnemo() -> Mnemonic:
    from mnemonic import Mnemonic  # lazily: loads a 2048-word list

    return Mnemonic("english")


def _normalise(words: Secret | str) -> str:
    raw = words.reveal() if isinstance(words, Secret) else words
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    return " ".join(unicodedata.normalize("NFKD", w) for w in raw.lower().split())


def new_mnemonic() -> Secret:
    """24 fresh BIP39 English words (256 bits of entropy)."""
    return Secret(_mnemo().generate(strength=256))


def validate(words: Secret | str) -> None:
    """:class:`InputError` unless ``words`` is a valid BIP39 English mnemonic.

    Messages say which position is wrong, never the words themselves.
    """
    norm = _normalise(words).split()
    if len(norm) not in WORD_COUNTS:
        raise InputError(f"a recovery mnemonic has 12, 15, 18, 21 or 24 words; got {len(norm)}")
    mnemo = _mnemo()
    known = set(mnemo.wordlist)
    for i, word in enumerate(norm, 1):
        if word not in known:
            raise InputError(f"word {i} of the recovery mnemonic is not a BIP39 English word")
    if not mnemo.check(" ".join(norm)):
        raise InputError("the recovery mnemonic fails its BIP39 checksum: a word is wrong or out of order")


def derive_identity(words: Secret | str) -> tuple[Secret, str]:
    """``(age identity, age recipient)`` of the backup key for ``words`` (see module docstring)."""
    validate(words)
    from mnemonic import Mnemonic

    seed = Mnemonic.to_seed(_normalise(words), passphrase="")
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(seed)
    identity = agekeys.x25519_identity_from_bytes(okm)
    return identity, agekeys.recipient_of(identity)


@dataclass(frozen=True)
class CheckResult:
    """Whether one secrets file can be recovered with the backup identity."""

    file: str
    listed: bool  # the backup recipient is in the file's sops metadata
    decrypts: bool  # sops, given only the backup identity, decrypts the file
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Both listed and decryptable."""
        return self.listed and self.decrypts


def isolated_env(identity: Secret, home: str | Path) -> dict[str, str]:
    """A sops environment whose only identity is ``identity``.

    The operator's ``SOPS_AGE_*`` variables are dropped and ``HOME`` /
    ``XDG_CONFIG_HOME`` point at an empty directory, because sops also looks
    for ``~/.config/sops/age/keys.txt`` and ``~/.ssh/id_ed25519``. The
    identity travels in the child's environment, never in argv.
    """
    env = {k: v for k, v in os.environ.items() if k not in _IDENTITY_VARS and not k.startswith("XDG_")}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(Path(home) / ".config")
    env["SOPS_AGE_KEY"] = str(identity.reveal())
    return env


def check(store: SopsStore, files: Iterable[str | Path], words: Secret | str) -> list[CheckResult]:
    """For each file: is the backup recipient listed, and does the backup identity alone decrypt it?"""
    identity, recipient = derive_identity(words)
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="infratool-recover-") as home:
        backup = SopsStore(store.repo, env=isolated_env(identity, home), sops=store.sops)
        for file in files:
            shown = store.display(file)
            try:
                listed = recipient in store.recipients(file)
            except (InputError, SecretsError) as exc:
                results.append(CheckResult(shown, False, False, str(exc)))
                continue
            if not listed:
                results.append(
                    CheckResult(
                        shown,
                        False,
                        False,
                        f"{shown}: the backup recipient {recipient} is not a recipient "
                        "(add it to .sops.yaml, then sops updatekeys)",
                    )
                )
                continue
            try:
                backup.check_decrypt(file)
            except (InputError, SecretsError) as exc:
                results.append(CheckResult(shown, True, False, str(exc)))
                continue
            results.append(CheckResult(shown, True, True))
    return results


RECIPIENT_FILE = ".backup-recipient"
"""Beside ``.sops.yaml``: the backup recipient ``recover init`` added (public, one line).

``.sops.yaml`` lists it among the operators' recipients with nothing to tell
them apart; this file is how a second ``recover init`` knows which one to
replace.
"""


def recorded_recipient(secrets_dir: Path, listed: Iterable[str]) -> str | None:
    """The backup recipient of an earlier ``recover init``, if ``.sops.yaml`` still lists it."""
    try:
        lines = (Path(secrets_dir) / RECIPIENT_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return found[0] if found and found[0] in set(listed) else None


def record_recipient(secrets_dir: Path, recipient: str) -> None:
    """Remember ``recipient`` as the backup recipient (see :data:`RECIPIENT_FILE`)."""
    from infratool.safeopen import atomic_write

    body = f"# age recipient of the backup identity (infratool secrets recover init)\n{recipient}\n"
    atomic_write(Path(secrets_dir) / RECIPIENT_FILE, body.encode(), 0o644)
