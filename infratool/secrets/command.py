"""``generator: command``: a value from a local command's stdout (pass, vault, op, bw...).

The command runs on the controller under ``/bin/sh -c``, in the policy's repo
root, with:

- **stdin**: the secret's name on the first line, then its previous value
  (nothing on a first generation), so a store that rotates in place can
  use it (``pass generate -f NAME``) and one that only reads can ignore it;
- **a minimal environment**: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``,
  ``LANG``/``LC_ALL``, ``TMPDIR``, plus only the variables the policy lists in
  ``env:`` (``PASSWORD_STORE_DIR``, ``VAULT_ADDR``, ``VAULT_TOKEN``,
  ``OP_SERVICE_ACCOUNT_TOKEN``, ``BW_SESSION``...). The controller's
  ``SOPS_AGE_KEY*`` never reach it unless listed;
- **a timeout** (``timeout``, default 30 s), after which its whole process
  group is killed.

Its stdout, minus one trailing newline, is the value. Its stderr is never
shown: a store's error output can echo the secret (or the previous one), so
an error says only the exit status and how many bytes of stderr were
withheld.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infratool.errors import SecretsError
from infratool.secrets.secret import Secret

BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR")
DEFAULT_PATH = "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin"


def environment(names: list[str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command's environment: :data:`BASE_ENV` and ``names``, from ``source`` (os.environ)."""
    source = os.environ if source is None else source
    env = {k: source[k] for k in (*BASE_ENV, *names) if k in source}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def run(params: Mapping[str, Any], name: str, previous: Secret | None, cwd: Path | None = None) -> Secret:
    """Run the generator command of secret ``name``; its stdout as a :class:`Secret`."""
    stdin = name.encode() + b"\n" + (previous.reveal_bytes() if previous is not None else b"")
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", params["run"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(list(params["env"])),
            cwd=cwd,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        raise SecretsError(f"generator command of {name} could not start: {exc.strerror}") from None
    try:
        out, err = proc.communicate(stdin, timeout=params["timeout"])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SecretsError(
            f"generator command of {name} timed out after {params['timeout']}s (killed)"
        ) from None
    withheld = f"; {len(err)} bytes of stderr withheld (they may hold a secret)" if err else ""
    if proc.returncode != 0:
        raise SecretsError(f"generator command of {name} exited {proc.returncode}{withheld}")
    if out.endswith(b"\r\n"):
        out = out[:-2]
    elif out.endswith(b"\n"):
        out = out[:-1]
    if not out.strip():
        raise SecretsError(f"generator command of {name} printed no value{withheld}")
    try:
        text = out.decode()
    except UnicodeDecodeError:
        raise SecretsError(f"generator command of {name} printed bytes that are not UTF-8 text") from None
    return Secret(text)


def check_env(v: list) -> str | None:
    """Param check of ``env``: a list of variable names."""
    ok = all(isinstance(x, str) and x and x.replace("_", "a").isalnum() and not x[0].isdigit() for x in v)
    return None if ok else "must be a list of environment variable names"


def check_run(v: str) -> str | None:
    """Param check of ``run``: a non-empty command."""
    return None if v.strip() else "must be a command"
