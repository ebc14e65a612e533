"""The sops store: the only code in infratool that runs the ``sops`` binary.

Secrets live in sops-encrypted YAML files in the fleet repo, encrypted to the
age recipients of the repo's ``.sops.yaml`` creation rules, exactly as
sops-nix expects. Nested keys are addressed ``a/b/c`` like sops-nix.

Rules this module keeps, and why:

* **Plaintext only in memory.** Decryption goes to a pipe (``sops decrypt``
  to stdout); re-encryption reads the new plaintext from stdin. No plaintext
  ever touches a file, so a crash cannot leave one behind.
* **No value in argv.** ``sops set --value-stdin`` and ``sops encrypt`` from
  stdin: argv is visible to every user through ``ps``.
* **Constant sops calls.** :meth:`SopsStore.read` is one call per file (and
  cached); :meth:`SopsStore.write` is at most one decrypt plus one encrypt,
  however many keys change.
* **Atomic files.** Ciphertext is written to a temp file in the same
  directory, fsynced and renamed over the old file, keeping its mode and
  owner: a reader sees the old file or the new one, never half of one.
* **One error tree.** A failed sops call raises what
  :func:`infratool.secrets.sopserrors.sops_error` makes of its exit code and
  stderr (redacted).

YAML: the decrypted document is parsed and re-emitted with ruamel.yaml in
round-trip mode (YAML 1.2, like the Go YAML library inside sops), which keeps
key order and comments; PyYAML speaks YAML 1.1 and would, for example, emit
the string ``1e3`` unquoted, which sops then reads back as the number 1000.

:meth:`SopsStore.write` re-encrypts the whole document with ``sops encrypt``,
so the file gets a new data key and exactly the recipients of the matching
``.sops.yaml`` creation rule (what ``sops updatekeys`` would give it).
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infratool import yamlsrc
from infratool.errors import SecretsError, SecretsFileError
from infratool.safeopen import atomic_write, edited_copy
from infratool.secrets.secret import Secret
from infratool.secrets.sopsbin import find_sops
from infratool.secrets.sopserrors import sops_error
from infratool.secrets.sopstree import (
    _assign,
    _delete,
    _reveal_text,
    _secrets,
    _yaml,
    sops_index,
    split_key,
)

ALIAS_REFUSED = "the decrypted document uses YAML aliases (*name): not accepted"

SOPS_TIMEOUT = 120.0


@dataclass
class _Cached:
    signature: tuple[int, int, int]
    tree: Any  # ruamel CommentedMap: the decrypted document, in memory only
    values: dict[str, Secret]


class SopsStore:
    """Read and write sops-encrypted YAML files under ``repo`` (the dir holding ``.sops.yaml``).

    ``env`` is the complete environment of every sops child (default: this
    process's), so a caller can choose exactly which identities sops sees
    (``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY``, ``SOPS_AGE_KEY_CMD``, and
    sops's defaults under ``$HOME``). ``sops`` overrides the binary.

    One store per thread: the plaintext cache is not locked. Two processes
    writing one file must hold :func:`infratool.rotation.lock.rotation_lock`.
    """

    def __init__(
        self,
        repo: str | Path,
        env: Mapping[str, str] | None = None,
        sops: str | Path | None = None,
        timeout: float = SOPS_TIMEOUT,
    ) -> None:
        self.repo = Path(repo).resolve()
        self.env = dict(os.environ if env is None else env)
        self.sops = str(sops) if sops is not None else find_sops()
        self.timeout = timeout
        self._cache: dict[Path, _Cached] = {}

    # --- paths ---------------------------------------------------------------

    @property
    def config(self) -> Path:
        """The ``.sops.yaml`` holding the creation rules."""
        return self.repo / ".sops.yaml"

    def path(self, file: str | Path) -> Path:
        """Absolute path of ``file`` (relative paths are relative to the repo)."""
        p = Path(file)
        return p if p.is_absolute() else self.repo / p

    def display(self, file: str | Path) -> str:
        """``file`` as shown in messages: relative to the repo when inside it."""
        p = self.path(file)
        try:
            return str(p.relative_to(self.repo))
        except ValueError:
            return str(p)

    def exists(self, file: str | Path) -> bool:
        """Whether the secrets file exists."""
        return self.path(file).is_file()

    def invalidate(self, file: str | Path | None = None) -> None:
        """Forget cached plaintext for ``file`` (or every file)."""
        if file is None:
            self._cache.clear()
        else:
            self._cache.pop(self.path(file), None)

    # --- reading ---------------------------------------------------------------

    def read(self, file: str | Path, *, missing_ok: bool = False) -> dict[str, Secret]:
        """Every value of ``file``, flattened to ``{"a/b/c": Secret}``: one sops call, cached.

        Non-string leaves are rendered as sops-nix would write them (``true``,
        ``5``; lists as JSON). A missing file is an error unless ``missing_ok``
        (then ``{}``).
        """
        cached = self._load(file, missing_ok=missing_ok)
        return dict(cached.values) if cached else {}

    def get(self, file: str | Path, key: str) -> Secret | None:
        """One value of ``file`` (``None`` if absent or the file does not exist)."""
        return self.read(file, missing_ok=True).get(key)

    def check_decrypt(self, file: str | Path) -> None:
        """Prove the current identities decrypt ``file`` (uncached; plaintext is discarded)."""
        path = self._existing(file)
        self._run(["decrypt", "--input-type", "yaml", "--output-type", "yaml", str(path)], path)

    def recipients(self, file: str | Path) -> list[str]:
        """The age recipients in ``file``'s sops metadata (read without decrypting)."""
        path = self._existing(file)
        try:
            # No aliases: a "billion laughs" file would expand when walked.
            doc = yaml.load(path.read_bytes(), Loader=yamlsrc.NoAliasLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None)
            raise SecretsFileError(
                f"malformed YAML: {problem}" if problem else "malformed YAML",
                file=self.display(path),
                line=mark.line + 1 if mark else None,
            ) from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # PyYAML's constructors raise plain Python errors for some malformed
            # scalars (a date like 2001-02-30, `!!bool maybe`).
            raise SecretsFileError(
                "malformed YAML: a value cannot be read", file=self.display(path)
            ) from None
        meta = doc.get("sops") if isinstance(doc, dict) else None
        if not isinstance(meta, dict):
            raise SecretsFileError("not a sops-encrypted file (no sops metadata)", file=self.display(path))
        entries = _list(meta.get("age"))
        for group in _list(meta.get("key_groups")):
            if isinstance(group, dict):
                entries.extend(_list(group.get("age")))
        found: list[str] = []
        for entry in entries:
            r = entry.get("recipient") if isinstance(entry, dict) else None
            if isinstance(r, str) and r not in found:
                found.append(r)
        return found

    def loaded(self) -> list[Path]:
        """The files this store has decrypted so far (what a plan read of the repo's secrets)."""
        return list(self._cache)

    # --- writing ---------------------------------------------------------------

    def set(self, file: str | Path, key: str, value: Secret) -> None:
        """Set one value with ``sops set --value-stdin`` (keeps the data key, recipients, comments).

        sops edits a ciphertext copy beside the file, which is then renamed into
        place, so a crash never leaves a half-written secrets file. A missing
        file is created through :meth:`write`.
        """
        path = self.path(file)
        index = sops_index(key)
        if not path.exists():
            self.write(file, {key: value})
            return
        payload = json.dumps(_reveal_text(value)).encode()
        before = _signature(path)
        # sops edits a ciphertext copy (safe to copy), renamed into place when it succeeded.
        with edited_copy(path) as tmp:
            self._run(
                ["set", "--input-type", "yaml", "--output-type", "yaml", "--value-stdin", tmp, index],
                path,
                stdin=payload,
            )
        cached = self._cache.pop(path, None)
        if cached is not None and cached.signature == before:
            # The cache matched the file sops just edited: update it instead of decrypting again.
            _assign(cached.tree, split_key(key), _reveal_text(value), self.display(path))
            cached.values[key] = Secret(_reveal_text(value))
            cached.signature = _signature(path)
            self._cache[path] = cached

    def write(self, file: str | Path, values: Mapping[str, Secret | str | None]) -> bool:
        """Set (or, for ``None``, delete) many keys at once; return whether the file changed.

        At most one decrypt (none if the file was read before and is unchanged
        on disk, or does not exist yet) and one encrypt, whatever the number
        of keys. A missing file is created from the ``.sops.yaml`` creation
        rules. Deleting a key also removes parents it leaves empty.
        """
        path = self.path(file)
        shown = self.display(path)
        keys = {key: split_key(key) for key in values}
        cached = self._load(file, missing_ok=True)
        tree = copy.deepcopy(cached.tree) if cached else _yaml().load("{}\n")
        changed = False
        for key, value in values.items():
            if value is None:
                changed |= _delete(tree, keys[key])
            else:
                changed |= _assign(tree, keys[key], _reveal_text(value), shown)
        if not changed and cached is not None:
            return False
        if not self.config.is_file():
            raise SecretsFileError(
                f"no {self.config.name} in {self.repo}: cannot choose recipients", file=shown
            )
        buf = io.StringIO()
        _yaml().dump(tree, buf)
        ciphertext = self._run(
            ["encrypt", "--filename-override", str(path), "--input-type", "yaml", "--output-type", "yaml"],
            path,
            stdin=buf.getvalue().encode(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, ciphertext)
        self._cache[path] = _Cached(_signature(path), tree, _secrets(tree))
        return True

    def updatekeys(self, file: str | Path) -> None:
        """Re-encrypt ``file``'s data key for the recipients in ``.sops.yaml`` (``updatekeys -y``)."""
        path = self._existing(file)
        self._run(["updatekeys", "-y", "--input-type", "yaml", str(path)], path)

    def rotate_data_key(self, file: str | Path, remove_age: tuple[str, ...] = ()) -> None:
        """New data key for ``file`` (``sops rotate``), dropping the ``remove_age`` recipients.

        A recipient that read the file before keeps nothing that opens the new
        ciphertext (``updatekeys`` alone keeps the data key it may have kept).
        sops edits a copy beside the file, renamed into place, as in :meth:`set`.
        """
        path = self._existing(file)
        args = ["rotate", "--input-type", "yaml", "--output-type", "yaml", "--in-place"]
        if remove_age:
            args += ["--rm-age", ",".join(remove_age)]
        with edited_copy(path) as tmp:
            self._run([*args, tmp], path)
        self.invalidate(path)

    def encrypt_as(self, file: str | Path, plaintext: bytes, fmt: str = "json") -> bytes:
        """Encrypt an in-memory document as if it were ``file`` (its creation rule picks the recipients).

        Nothing is written: the ciphertext is returned (a saved plan's sealed
        secrets, :mod:`infratool.secrets.seal`). The plaintext goes to sops on
        stdin, never in argv or a temp file. ``fmt`` is sops's json/yaml/dotenv/binary.
        """
        path = self.path(file)
        args = ["encrypt", "--filename-override", str(path), "--input-type", fmt, "--output-type", fmt]
        return self._run(args, path, stdin=plaintext)

    def decrypt_as(self, file: str | Path, ciphertext: bytes, fmt: str = "json") -> bytes:
        """Decrypt an in-memory document that :meth:`encrypt_as` made for ``file``; the plaintext bytes."""
        path = self.path(file)
        args = ["decrypt", "--filename-override", str(path), "--input-type", fmt, "--output-type", fmt]
        return self._run(args, path, stdin=ciphertext)

    # --- internals ---------------------------------------------------------------

    def _existing(self, file: str | Path) -> Path:
        path = self.path(file)
        if not path.is_file():
            raise SecretsFileError("secrets file not found", file=self.display(path))
        return path

    def _load(self, file: str | Path, *, missing_ok: bool) -> _Cached | None:
        path = self.path(file)
        if not path.is_file():
            if missing_ok:
                return None
            raise SecretsFileError("secrets file not found", file=self.display(path))
        sig = _signature(path)
        cached = self._cache.get(path)
        if cached is not None and cached.signature == sig:
            return cached
        out = self._run(["decrypt", "--input-type", "yaml", "--output-type", "yaml", str(path)], path)
        try:
            # A committed sops file may carry aliases in its structure (anyone with
            # the public recipients can write one): refuse them before ruamel
            # builds a tree that _secrets() would walk exponentially.
            if yamlsrc.has_alias(out):
                raise SecretsFileError(ALIAS_REFUSED, file=self.display(path))
            tree = _yaml().load(out.decode())
        except SecretsFileError:
            raise
        except Exception as exc:  # ruamel has no single base error; sops wrote this YAML
            raise SecretsFileError(
                f"sops produced YAML that cannot be parsed ({type(exc).__name__})",
                file=self.display(path),
            ) from None
        finally:
            del out
        if tree is None:
            tree = _yaml().load("{}\n")
        if not isinstance(tree, Mapping):
            raise SecretsFileError("the decrypted document is not a mapping", file=self.display(path))
        cached = _Cached(sig, tree, _secrets(tree))
        self._cache[path] = cached
        return cached

    def _run(self, args: list[str], path: Path, stdin: bytes | None = None) -> bytes:
        argv = [self.sops, "--disable-version-check"]
        if self.config.is_file():
            # Explicit, so sops never picks up a .sops.yaml from the cwd's parents.
            argv += ["--config", str(self.config)]
        argv += args
        try:
            proc = subprocess.run(
                argv,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                env=self.env,
                cwd=self.repo,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SecretsError(f"sops {args[0]} {self.display(path)} timed out") from None
        except OSError as exc:
            raise SecretsError(f"cannot run sops ({self.sops}): {exc.strerror}") from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            raise sops_error(args[0], self.display(path), self.config, proc.returncode, stderr)
        return proc.stdout


def _list(value: Any) -> list[Any]:
    """``value`` if it is a list, else nothing (metadata of another shape lists no one)."""
    return list(value) if isinstance(value, list) else []


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)
