"""A real systemd 252 as PID 1, for the timer's end-to-end tests (issue 23).

The recipe (REFERENCE.md "A real systemd, here"): a Debian bookworm rootfs
made by ``debootstrap --variant=minbase`` with systemd, dbus and Python; a
PID, mount, UTS, IPC and cgroup namespace; ``/lib/systemd/systemd --system``
exec'd in a chroot. The network namespace is the host's, so the lab hosts on
127.x stay reachable.

Cost is kept bounded by caching, in two layers under :data:`CACHE` (outside
the clone), built once per machine and never written to again: the
debootstrapped base (about 35 s on an idle machine, several minutes on a busy
one), keyed by the recipe and the packages; and over it a layer with a venv
in ``/opt/infratool`` holding infratool's dependencies (and setuptools to build
it), installed from wheels
built on the host, keyed by pyproject's dependencies (a new dependency
rebuilds only this layer). Each boot runs on an overlayfs of both whose
writable layer is private to that boot and goes away with it. Per boot, only
infratool itself is (re)installed from a copy of the tree under test, as an
operator would (``pip install`` into ``/opt/infratool``, built inside the
container: no wheel round trip through an isolated build env on the host).

Two things this container needs that a plain ``chroot`` does not give, both
found the hard way:

* **Mount propagation for credentials.** systemd 252 builds a unit's
  ``$CREDENTIALS_DIRECTORY`` in a short-lived child process with a mount
  namespace of its own (src/core/execute.c, ``setup_credentials()``): it
  mounts a ramfs over ``/dev/shm`` there, writes the credentials into it and
  ``MS_MOVE``s it onto ``/run/credentials/<unit>``. That mount reaches PID 1's
  namespace only if ``/run`` is a *shared* mount. On a real machine systemd
  makes ``/`` shared itself (``mount_setup()``), but not when it detects a
  container: there it trusts the container manager. ``unshare
  --propagation private`` leaves every mount private, so the credentials
  were mounted where nobody could see them and the service found an empty
  directory, with nothing logged (the failing mount is only logged at debug
  level). Making the container's root ``rshared`` (in its own namespace, so
  nothing propagates to the host) fixes it; :func:`boot` does that and
  ``tests/e2e/test_timer_systemd.py`` proves it.
* **A cgroup namespace.** This machine's PID 1 is not systemd and its cgroups
  are v1/hybrid. A container systemd given the host's ``/sys/fs/cgroup``
  creates ``init.scope``, ``system.slice`` ... at the root of the *host's*
  hierarchies, and two of them at once (two pytest sessions) would fight over
  the same cgroups. Each boot moves into a cgroup of its own on the host's
  cgroup2 hierarchy, unshares the cgroup namespace and mounts a fresh cgroup2
  as its ``/sys/fs/cgroup``: the container's systemd manages only that
  subtree, which is removed after it stops.

Run ``python tests/realsystemd.py build`` to build (or find) the rootfs and
boot it once, with the times printed: ``.ci/run`` does that before the suite.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("INFRATOOL_TEST_ROOTFS_CACHE", "/var/cache/infratool-test-rootfs"))
"""Where built rootfs live (outside the clone: a fresh clone reuses them)."""
RUNS = Path(os.environ.get("INFRATOOL_TEST_SYSTEMD_RUNS", "/var/lib/infratool-test-systemd"))
"""Per-boot directories (overlay layers, shared dir). Not under /tmp: the
service's ``PrivateTmp=yes`` would hide anything the test puts there."""
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
VENV = "/opt/infratool"
RECIPE = 1
"""Bump when the base's build steps change, so stale caches are not reused."""
VENV_RECIPE = 2
"""The same for the venv layer."""
SOURCES = ("infratool", "pyproject.toml", "README.md")
"""What ``pip install`` needs of the tree to build infratool."""
CGROUP2 = Path("/sys/fs/cgroup/unified")


class RootfsUnavailable(RuntimeError):
    """The rootfs cannot be built here (no debootstrap, no mirror, not root)."""


def find_mirror() -> str:
    """The Debian mirror this machine's apt uses (``$INFRATOOL_TEST_MIRROR`` wins)."""
    if os.environ.get("INFRATOOL_TEST_MIRROR"):
        return os.environ["INFRATOOL_TEST_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        # One-line style: "deb [opts] URI suite comp"; deb822 style: "URIs: URI".
        for match in re.finditer(r"^(?:deb(?:\s+\[[^\]]*\])?\s+|URIs:\s*)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and not uri.endswith(
                ("-security", "/debian-security")
            ):
                return uri
    return "http://deb.debian.org/debian"


def base_key() -> str:
    """What the debootstrapped base depends on: the recipe and the packages."""
    return hashlib.sha256(repr((RECIPE, SUITE, PACKAGES)).encode()).hexdigest()[:16]


def venv_key() -> str:
    """What the venv layer depends on: the base, pyproject's dependencies, the Python version."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    text = repr((VENV_RECIPE, base_key(), sorted(deps), sys.version_info[:2]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log(message: str) -> None:
    """Progress for CI logs (stderr, so it shows with ``-s`` and in ``.ci/run``)."""
    print(f"realsystemd: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RootfsUnavailable(
            f"{' '.join(argv[:4])}... exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


def build_wheels(dest: Path) -> None:
    """Wheels of everything infratool needs to run and to be built (setuptools), from the host's pip."""
    dest.mkdir(parents=True, exist_ok=True)
    build_backend = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest), str(REPO), *build_backend],
        env=env,
    )


def copy_sources(dest: Path) -> Path:
    """A copy of the tree under test that pip can build (without caches or build leftovers)."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=junk)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _in_chroot(root: Path, script: str, *, binds: dict[str, Path], overlay: str = "") -> None:
    """Run ``script`` (sh) chrooted in ``root`` with /proc, /dev and ``binds`` mounted, in a throwaway namespace.

    ``overlay``: mount options for an overlayfs to mount on ``root`` first.
    """
    mounts = "".join(
        f'mkdir -p "$R{inside}" && mount --bind "{outside}" "$R{inside}"\n'
        for inside, outside in binds.items()
    )
    wrapper = (
        "set -e\n"
        f'R="{root}"\n'
        + (f'mount -t overlay overlay -o "{overlay}" "$R"\n' if overlay else "")
        + 'mount -t proc proc "$R/proc"\n'
        'mount --rbind /dev "$R/dev"\n'
        f"{mounts}"
        'exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/sh -ec "$1"\n'
    )
    _run(
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
            wrapper,
            "sh",
            script,
        ]
    )


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one build per machine; the others wait and reuse it
        yield


def rootfs() -> list[Path]:
    """The cached layers (top first) of the rootfs for this tree; built when missing.

    Two layers, so a new dependency in pyproject.toml rebuilds only the venv
    (a minute), not the debootstrapped base (several minutes on a busy machine).
    """
    if os.geteuid() != 0:
        raise RootfsUnavailable("needs root (debootstrap, chroot, namespaces)")
    base = CACHE / f"base-{base_key()}" / "root"
    layer = CACHE / f"venv-{venv_key()}" / "layer"
    if not (base / "etc" / "infratool-base-ok").exists() or not (layer / ".infratool-venv-ok").exists():
        with _cache_lock():
            _build_base(base)
            _build_venv(layer, base)
    return [layer, base]


def _build_base(final: Path) -> None:
    if (final / "etc" / "infratool-base-ok").exists():
        return
    if shutil.which("debootstrap") is None:
        raise RootfsUnavailable("debootstrap is not installed (scripts/setup.sh installs it)")
    started = time.monotonic()
    work = final.parent.with_name(f".build-{final.parent.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    mirror = find_mirror()
    log(f"building the test rootfs base ({SUITE} from {mirror}) in {final.parent}")
    try:
        # Reuse the .debs apt already fetched for this machine (systemd, python3...).
        apt_cache = Path("/var/cache/apt/archives")
        reuse = [f"--cache-dir={apt_cache}"] if apt_cache.is_dir() else []
        include = f"--include={','.join(PACKAGES)}"
        _run(["debootstrap", "--variant=minbase", *reuse, include, SUITE, str(work / "root"), mirror])
        (work / "root" / "etc" / "infratool-base-ok").touch()
        shutil.rmtree(final.parent, ignore_errors=True)
        final.parent.mkdir(parents=True)
        (work / "root").rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"base built in {time.monotonic() - started:.1f} s (debootstrap)")


def _build_venv(final: Path, base: Path) -> None:
    if (final / ".infratool-venv-ok").exists():
        return
    started = time.monotonic()
    work = final.parent.with_name(f".build-{final.parent.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        for sub in ("upper", "ovl", "merged"):
            (work / sub).mkdir(parents=True)
        build_wheels(work / "wheels")
        _in_chroot(
            work / "merged",
            f"python3 -m venv {VENV}\n"
            f"{VENV}/bin/pip install -q --no-cache-dir --no-index --find-links /mnt/wheels infratool "
            + " ".join(
                f"'{r}'"
                for r in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
            )
            + "\n",
            binds={"/mnt/wheels": work / "wheels"},
            overlay=f"lowerdir={base},upperdir={work / 'upper'},workdir={work / 'ovl'}",
        )
        # The tree under test is reinstalled at every boot; the dependencies stay.
        (work / "upper" / "mnt" / "wheels").rmdir()
        (work / "upper" / ".infratool-venv-ok").touch()
        shutil.rmtree(final.parent, ignore_errors=True)
        final.parent.mkdir(parents=True)
        (work / "upper").rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"venv layer (infratool's dependencies) built in {time.monotonic() - started:.1f} s")


@dataclass
class Container:
    """A running systemd as PID 1; :meth:`run` executes commands inside it."""

    run_dir: Path
    share: Path
    """A directory with the same path inside and outside (the lab and fleet repo live there)."""
    process: subprocess.Popen
    cgroup: Path
    pid: int = 0
    """systemd's pid as the host sees it."""
    boot_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The container's / as seen from the host."""
        return Path(f"/proc/{self.pid}/root")

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces, its root and cwd /)."""
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-C", "-r", "-w", "--"]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "NO_COLOR": "1",
        }
        proc = subprocess.run(
            [*cmd, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def systemctl(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside the container."""
        return self.run("systemctl", "--no-pager", *args, **kw)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props), check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        """Power the container off (SIGKILL if it will not), remove its cgroup and its directory."""
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.systemctl("poweroff", timeout=20)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.pid:
                    # PID 1 of its PID namespace: SIGKILL takes every process in it along.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, 9)
                self.process.wait(timeout=30)
        _remove_cgroup(self.cgroup)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _remove_stale(cgroup_root: Path, min_age: float = 600) -> None:
    """Remove what a killed test session left behind: run dirs whose cgroup holds no process."""
    if not RUNS.is_dir():
        return
    for run_dir in RUNS.iterdir():
        cgroup = cgroup_root / f"infratool-test-{run_dir.name}"
        try:
            if time.time() - run_dir.stat().st_mtime < min_age:
                continue  # maybe a boot that has not entered its cgroup yet
        except OSError:
            continue
        if cgroup.is_dir() and any(p.read_text().strip() for p in cgroup.rglob("cgroup.procs")):
            continue  # a live container
        _remove_cgroup(cgroup)
        shutil.rmtree(run_dir, ignore_errors=True)


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


_BOOT = r"""
set -e
M="$1/merged"; SHARE="$2"; SRC="$3"
# Own cgroup namespace root: see the module docstring.
mount -t overlay overlay -o "lowerdir=$4,upperdir=$1/upper,workdir=$1/work" "$M"
mkdir -p "$M$SHARE" "$M/mnt/src"
mount --bind "$SHARE" "$M$SHARE"
mount --bind "$SRC" "$M/mnt/src"
mount -t proc proc "$M/proc"
mount --rbind /sys "$M/sys"
mount -t cgroup2 cgroup2 "$M/sys/fs/cgroup"
mount --rbind /dev "$M/dev"
mount -t tmpfs -o mode=0755 tmpfs "$M/run"
# Credentials need shared propagation (module docstring); our own namespace's peers only.
mount --make-rshared "$M"
chroot "$M" /usr/bin/env -i PATH=/usr/bin:/bin \
    /opt/infratool/bin/pip install -q --no-cache-dir --no-index --no-deps --no-build-isolation \
    --force-reinstall /mnt/src
umount "$M/mnt/src"
exec chroot "$M" /usr/bin/env -i container=unshare /lib/systemd/systemd --system --log-target=journal
"""


def boot(layers: list[Path], *, timeout: float = 120) -> Container:
    """Boot systemd over an overlay of ``layers`` (top first) with infratool from this tree; wait until it runs."""
    if not CGROUP2.is_dir() and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        cgroup_root = Path("/sys/fs/cgroup")
    else:
        cgroup_root = CGROUP2
    started = time.monotonic()
    _remove_stale(cgroup_root)
    run_dir = RUNS / uuid.uuid4().hex[:12]
    share = run_dir / "share"
    for sub in ("upper", "work", "merged", "share", "src"):
        (run_dir / sub).mkdir(parents=True)
    cgroup = cgroup_root / f"infratool-test-{run_dir.name}"
    cgroup.mkdir()
    # Enter the new cgroup first, then unshare: the namespace's root is that cgroup.
    outer = (
        'echo $$ > "$1/cgroup.procs"; shift; '
        'exec unshare --pid --fork --mount --uts --ipc --cgroup --propagation private sh -c "$@"'
    )
    log_file = open(run_dir / "boot.log", "w")  # noqa: SIM115 (kept open for the container's life)
    process = subprocess.Popen(
        [
            "sh",
            "-c",
            outer,
            "sh",
            str(cgroup),
            _BOOT,
            "boot",
            str(run_dir),
            str(share),
            str(copy_sources(run_dir / "src")),
            ":".join(map(str, layers)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    container = Container(run_dir=run_dir, share=share, process=process, cgroup=cgroup)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RootfsUnavailable(
                    f"the container exited {process.returncode}: {_tail(run_dir / 'boot.log')}"
                )
            container.pid = _systemd_pid(process.pid)
            if container.pid:
                state = container.systemctl("is-system-running", timeout=20).stdout.strip()
                if state in ("running", "degraded"):
                    break
            if time.monotonic() > deadline:
                raise RootfsUnavailable(
                    f"systemd did not come up in {timeout:.0f} s: {_tail(run_dir / 'boot.log')}"
                )
            time.sleep(0.3)
        if state == "degraded":
            failed = container.systemctl("--failed", "--plain", "--no-legend").stdout
            log(f"booted degraded; failed units: {failed.strip()}")
    except BaseException:
        container.stop()
        raise
    container.boot_seconds = time.monotonic() - started
    return container


def _systemd_pid(outer_pid: int) -> int:
    """The pid of ``systemd`` below ``sh`` → ``unshare``, once it has exec'd."""
    frontier = [outer_pid]
    for _ in range(4):
        children = []
        for pid in frontier:
            with contextlib.suppress(OSError):
                children += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for pid in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        frontier = children
    return 0


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text()[-2000:]
    return ""


def main() -> int:
    """``build``: build or find the rootfs, boot it once, check credentials; print the times."""
    if sys.argv[1:] != ["build"]:
        print("usage: python tests/realsystemd.py build", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    layers = rootfs()
    log(f"rootfs ready: {' over '.join(map(str, layers))} ({time.monotonic() - t0:.1f} s; ~0 when cached)")
    container = boot(layers)
    try:
        log(f"boot (infratool installed from this tree, then systemd up): {container.boot_seconds:.1f} s")
        check = container.run(
            "systemd-run", "--wait", "--quiet", "--pipe", "-p", "SetCredential=probe:ok",
            "/bin/sh", "-c", 'cat "$CREDENTIALS_DIRECTORY/probe"',
        )  # fmt: skip
        log(f"credential probe: {check.stdout.strip() or check.stderr.strip()!r}")
        return 0 if check.stdout.strip() == "ok" else 1
    finally:
        container.stop()


if __name__ == "__main__":
    sys.exit(main())
