"""Rotations land in git: check before, commit (and push) after.

The timer rewrites ``secrets/*.yaml`` and ``secrets/.rotation-state.yaml``.
Left uncommitted, the next deploy from a colleague's checkout or from CI
reinstalls the *old* value while the service already holds the new one. So,
when the fleet repo is a git repository, a rotation run:

1. **before** touching anything (:meth:`FleetGit.preflight`) refuses with
   exit 3 when ``secrets/`` has uncommitted changes (someone's edit would be
   swept into the rotation's commit, or lost), and, when it will push, when
   the branch is behind its upstream after a ``git fetch`` (someone else
   rotated or edited secrets: rotating on the old files would fork them);
   right before the first write (:meth:`FleetGit.start`) it writes a
   *journal* (``.git/infratool-rotation.json``) saying a rotation is under way;
2. **after** (:meth:`FleetGit.finish`) commits what changed under
   ``secrets/`` (the policy's sops files, the state file, other rotation
   kinds' sops files: the directory was clean before; nothing outside it)
   with a message naming each secret and its new generation — taken from the
   state file, which never holds a value — then pushes to the upstream, and
   removes the journal.

A crash between the two leaves the journal: the next run knows the changes
in ``secrets/`` are a rotation's, not a person's, lets them through the check
and commits them. A push that fails (rejected, offline) leaves the commit in
place; every run pushes whatever the branch has that its upstream lacks, so
the next run retries it.

Real ``git`` through :mod:`subprocess` with a minimal environment (never the
operator's ``SOPS_AGE_KEY`` or tokens), no prompts (``GIT_TERMINAL_PROMPT=0``,
ssh in batch mode).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infratool import log
from infratool.errors import InfratoolError, InputError
from infratool.localenv import minimal_env
from infratool.rotation import sopsnix, state
from infratool.secrets.secret import REDACTOR

GIT_TIMEOUT = 120.0
JOURNAL = "infratool-rotation.json"
DEFAULT_AUTHOR = "infratool <infratool@localhost>"
"""Used when neither the policy nor git's config names anyone (a fresh timer host)."""


class GitError(InfratoolError):
    """A git command failed (exit 1: the run failed, the next run retries)."""


@dataclass(frozen=True)
class GitOptions:
    """What the operator asked for: from the policy's ``git:`` section and the flags."""

    commit: bool = True
    push: bool = False
    author: str | None = None


@dataclass
class GitOutcome:
    """What :meth:`FleetGit.finish` did, for the report and the exit code."""

    commit: str | None = None
    """The new commit's short id, if one was made."""
    subject: str | None = None
    pushed: str | None = None
    """``origin/main`` when the branch was pushed."""
    error: str | None = None
    """Why the commit or the push failed (the run then exits 1)."""
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether the commit or the push failed."""
        return self.error is not None


def _env() -> dict[str, str]:
    env = minimal_env(("SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_SSH", "XDG_CONFIG_HOME"))
    env["GIT_TERMINAL_PROMPT"] = "0"  # a push must fail, not wait for a password on a timer
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env["LC_ALL"] = "C"
    return env


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env or _env(),
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise GitError(f"cannot run git: {exc.strerror}") from None
    if check and proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or [f"exit {proc.returncode}"]
        raise GitError(REDACTOR.redact(f"git {args[0]} failed: {lines[-1].strip()}"))
    return proc.stdout


def _is_lock(rel: str) -> bool:
    """Rotation lock files (``secrets/.<file>.lock``) come and go with every run: not changes."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".lock")


@dataclass
class FleetGit:
    """The fleet repo as a git work tree, for one rotation run."""

    flake: Path
    """The fleet repo (where ``secrets/`` is); git commands run here."""
    paths: list[Path]
    """What a rotation writes: the policy's sops files and the state file (plus any other
    change under ``secrets/`` at the end: the tree was clean before)."""
    options: GitOptions
    command: str = "secrets rotate"
    """The infratool command committing (named in the commit message)."""
    log: Any = field(default_factory=lambda: log.get_logger("infratool.rotation.git"))

    @classmethod
    def open(
        cls, flake: Path, paths: Sequence[Path], options: GitOptions, command: str = "secrets rotate"
    ) -> FleetGit | None:
        """The repo, or None when it is not a git work tree (works as without git) or commits are off.

        A repo whose ``secrets/`` git ignores (a dotfiles repo around ``$HOME``)
        is not the fleet's: treated as no git. ``--push`` in a repo that is not
        one is bad input.
        """
        flake = flake.resolve()
        if not is_fleet_repo(flake):
            if options.push:
                raise InputError(f"--push: the fleet repo {flake} is not a git repository")
            return None
        if not options.commit:
            if options.push:
                raise InputError("--push needs commits: drop --no-commit (or git: {commit: false})")
            return None
        # Only what lives in the fleet repo is committed (a lab's inventory sits beside it).
        inside = [p.resolve() for p in paths if p.resolve().is_relative_to(flake)]
        return cls(flake, inside, options, command)

    # -- before ---------------------------------------------------------------

    def preflight(self) -> None:
        """Refuse (exit 3) on a dirty ``secrets/`` or a branch behind upstream; touches nothing."""
        # After a crash (journal left), what changed in secrets/ is the crashed run's: committed at the end.
        resumed = self.journal.exists()
        dirty = [] if resumed else self._dirty()
        if dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            raise InputError(
                f"secrets/ has uncommitted changes ({shown}): commit or discard them first "
                "(git status secrets/); nothing was rotated"
            )
        if self.options.push:
            branch, upstream = self._upstream()
            self._fetch()
            ahead, behind = self._ahead_behind()
            if behind:
                waiting = f"; {ahead} local commit(s) not pushed yet" if ahead else ""
                raise InputError(
                    f"{branch} is {behind} commit(s) behind {upstream}: someone else rotated or edited "
                    f"secrets{waiting}. Catch up first: git pull --rebase (then run again); "
                    "nothing was rotated"
                )
        if resumed:
            self.log.info("an interrupted rotation's changes will be committed", journal=str(self.journal))

    def start(self) -> None:
        """Write the journal: from here on, changes to the rotation's files are the rotation's."""
        self.journal.write_text(
            json.dumps({"pid": os.getpid(), "started": state.format_time(state.utcnow())})
        )

    # -- after ------------------------------------------------------------------

    def finish(self, message: tuple[str, str] | None = None) -> GitOutcome:
        """Commit the rotation's files (if changed), push (if asked), drop the journal.

        ``message``: subject and body, for a change that is not a rotation
        (``host remove``); default :meth:`message`.
        """
        out = GitOutcome()
        try:
            # The policy's files and whatever else changed in secrets/ (clean before the run, so the
            # run's: other rotation kinds' sops files too); outside secrets/ only the sops-nix modules
            # the rotation generates (a checkout without them would deploy no secret to the host).
            modules = sorted(self.flake.glob(f"hosts/*/generated/{sopsnix.MODULE}"))
            known = [self._rel(p) for p in [*self.paths, *modules] if p.exists() or self._tracked(p)]
            existing = list(dict.fromkeys([*known, *self._dirty()]))
            if existing:
                _run(self.flake, "add", "-A", "--", *existing)
            staged = _run(self.flake, "diff", "--cached", "--name-only", "--", *existing) if existing else ""
            if staged.strip():
                subject, body = message or self.message()
                _run(
                    self.flake,
                    "commit",
                    "-q",
                    "-m",
                    subject,
                    "-m",
                    body,
                    "--",
                    *existing,
                    env=self._author_env(),
                )
                out.commit = _run(self.flake, "rev-parse", "--short", "HEAD").strip()
                out.subject = subject
            self.journal.unlink(missing_ok=True)
            if self.options.push:
                out.pushed = self._push()
        except InfratoolError as exc:  # git failed, or the upstream went away since the check
            out.error = exc.message
        return out

    def message(self) -> tuple[str, str]:
        """Commit subject and body: each secret and its generation, from the state file (never values)."""
        state_file = state.state_path(self.flake / "secrets")
        rel = self._rel(state_file)
        before = _generations(_run(self.flake, "show", f"HEAD:{rel}", check=False))
        after = _generations(state_file.read_text() if state_file.exists() else "")
        rotated = [(n, g) for n, (g, _) in after.items() if g > before.get(n, (0, ""))[0]]
        failed = [n for n, (_, s) in after.items() if s == "failed" and before.get(n, (0, ""))[1] != "failed"]
        if rotated:
            subject = "secrets: rotate " + ", ".join(f"{n} (generation {g})" for n, g in rotated)
        elif failed:
            subject = "secrets: rotation of " + ", ".join(failed) + " failed (rolled back)"
        else:
            subject = "secrets: rotation bookkeeping"
        if len(subject) > 72 and rotated:
            subject = f"secrets: rotate {len(rotated)} secrets"
        lines = [f"{n}: generation {before.get(n, (0, ''))[0]} -> {g}" for n, g in rotated]
        lines += [f"{n}: rotation failed, every consumer rolled back" for n in failed]
        lines.append("")
        lines.append(f"Committed by `infratool {self.command}`; no value appears in this message.")
        return subject, "\n".join(lines)

    # -- helpers ---------------------------------------------------------------

    @property
    def journal(self) -> Path:
        """``.git/infratool-rotation.json``: present while a rotation's changes are not committed."""
        return self.flake / _run(self.flake, "rev-parse", "--git-path", JOURNAL).strip()

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.flake)

    def _tracked(self, path: Path) -> bool:
        return bool(_run(self.flake, "ls-files", "--", self._rel(path)).strip())

    def _dirty(self) -> list[str]:
        """Changed, staged or untracked paths under ``secrets/`` and among :attr:`paths` (lock files aside).

        The paths outside ``secrets/`` (the inventory, for ``host remove``) are
        committed too, so an edit someone left there must refuse the run as
        one in ``secrets/`` does.
        """
        outside = [r for r in (self._rel(p) for p in self.paths) if not r.startswith("secrets/")]
        out = _run(
            self.flake,
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--",
            "secrets",
            *outside,
        )
        paths: list[str] = []
        top = Path(_run(self.flake, "rev-parse", "--show-toplevel").strip())
        entries = iter(out.split("\0"))
        for entry in entries:
            if len(entry) < 4:
                continue
            if entry[0] in "RC":
                next(entries, None)  # a rename's second field: the old name
            rel = entry[3:]
            # git prints paths relative to the top level; make them relative to the fleet repo.
            rel = os.path.relpath(top / rel, self.flake)
            if not _is_lock(rel):
                paths.append(rel)
        return paths

    def _upstream(self) -> tuple[str, str]:
        branch = _run(self.flake, "symbolic-ref", "--short", "-q", "HEAD", check=False).strip()
        if not branch:
            raise InputError("--push: HEAD is detached; check out the branch the fleet deploys from")
        upstream = _run(
            self.flake, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}", check=False
        ).strip()
        if not upstream:
            raise InputError(
                f"--push: branch {branch} has no upstream; set one: git branch --set-upstream-to=origin/{branch}"
            )
        return branch, upstream

    def _fetch(self) -> None:
        try:
            _run(self.flake, "fetch", "--quiet")
        except GitError as exc:
            raise GitError(
                f"{exc}: cannot tell whether someone else rotated; nothing was rotated "
                "(run again when the remote is reachable, or without --push)"
            ) from None

    def _ahead_behind(self) -> tuple[int, int]:
        out = _run(self.flake, "rev-list", "--left-right", "--count", "HEAD...@{upstream}").split()
        return int(out[0]), int(out[1])

    def _push(self) -> str | None:
        branch, upstream = self._upstream()
        ahead, _ = self._ahead_behind()
        if not ahead:
            return None
        remote = _run(self.flake, "config", f"branch.{branch}.remote").strip()
        merge = _run(self.flake, "config", f"branch.{branch}.merge").strip()
        try:
            _run(self.flake, "push", "--quiet", remote, f"HEAD:{merge}")
        except GitError as exc:
            raise GitError(
                f"{exc}; the commit stays here and the next run pushes it again "
                f"(or push by hand: git push {remote} HEAD:{merge})"
            ) from None
        return upstream

    def _author_env(self) -> dict[str, str]:
        env = _env()
        name_email = self.options.author
        configured = _run(self.flake, "config", "user.email", check=False).strip()
        if name_email is None and configured:
            return env
        name, _, email = (name_email or DEFAULT_AUTHOR).partition(" <")
        email = email.rstrip(">")
        env.update(GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email)
        if not configured:
            env.update(GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)
        return env


def is_fleet_repo(flake: Path) -> bool:
    """Whether ``flake`` is in a git work tree that tracks ``secrets/`` (not one that ignores it).

    A repo git refuses to open (owned by another user: "dubious ownership")
    is bad input, not "no git": rotations would silently stop being committed.
    """
    if shutil.which("git") is None or not flake.is_dir():
        return False
    proc = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=flake, env=_env(), capture_output=True, text=True
    )
    if "dubious ownership" in proc.stderr:
        raise InputError(
            f"git refuses the fleet repo {flake} (owned by another user): "
            f"git config --global --add safe.directory {flake}, or pass --no-commit"
        )
    return proc.stdout.strip() == "true" and not _ignored(flake)


def _ignored(flake: Path) -> bool:
    """Whether git ignores ``secrets/`` (the repo around it is not the fleet's)."""
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "secrets/.sops.yaml"], cwd=flake, env=_env(), capture_output=True
    )
    return proc.returncode == 0


def _generations(text: str) -> dict[str, tuple[int, str]]:
    """name → (generation, status) from a state file's text (empty or unreadable: nothing)."""
    try:
        data = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict):
        return {}
    # Version 1: `secrets:` by name; version 2: `rotations:` by kind/name (secret/NAME shown as NAME).
    entries = data.get("rotations") if isinstance(data.get("rotations"), dict) else data.get("secrets")
    if not isinstance(entries, dict):
        return {}
    out = {}
    for name, entry in entries.items():
        if isinstance(entry, dict) and isinstance(entry.get("generation", 0), int):
            shown = str(name).removeprefix("secret/") if "rotations" in data else str(name)
            out[shown] = (int(entry.get("generation") or 0), str(entry.get("status") or ""))
    return out
