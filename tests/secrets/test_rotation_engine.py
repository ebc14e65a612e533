"""The rotation engine without the lab: every phase, a crash after every step, rollback.

Stand-ins, named as such: hosts are :class:`FakeHost` (an in-memory host
that records the commands it runs and the files written to it, and
"verifies" a value by comparing it with the file it holds), the sops file
is :class:`FakeStore` (a dict), and :func:`apply` is a small runner with the
real one's rules (phases in order, a change skipped when its host or a
required target failed). Everything else is real: the policy parser, the
secret task's decisions and plan, the engine's actions, the state file and
the flock. A crash is a fault point raising :class:`Crash`, after which the
process's held locks and caches are dropped, as a ``kill -9`` would.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infratool.changes import Change
from infratool.context import LocalContext
from infratool.errors import InfratoolError
from infratool.inventory import load as load_inventory
from infratool.options import RunOptions
from infratool.remote import Result
from infratool.rotation import engine, state
from infratool.rotation.kinds import all_kinds, get_kind
from infratool.rotation.lock import lock_path
from infratool.secrets import identity
from infratool.secrets.secret import Secret
from infratool.tasks.base import PlanContext
from infratool.tasks.secrets_rotation import RotateSecrets, SecretKind

POLICY = """
secrets:
  db/pw:
    file: secrets/app.yaml
    generator: password
    params: {length: 24}
    max_age: 30d
    consumers:
      - host: alpha
        file: {path: /etc/app/pw, mode: "0600", owner: root}
        reload: [systemctl reload app]
        verify: check /etc/app/pw
      - host: beta
        file: {path: /etc/app/pw, mode: "0600", owner: root}
        verify: check /etc/app/pw
  api/token:
    file: secrets/app.yaml
    generator: hex
    params: {bytes: 16}
    consumers:
      - host: beta
        file: {path: /etc/app/token, mode: "0600", owner: root}
        verify: check /etc/app/token
"""

STEPS = ["generated", "stored", "delivered-one", "delivered", "verified", "promoting", "promoted"]
ROLLBACK_STEPS = ["rolled-back-one", "rolled-back", "discarded"]


class Crash(Exception):
    """Raised at a fault point: the process dies there."""


@dataclass
class FakeHost:
    """An in-memory host: files, the commands it ran; ``check FILE`` passes if stdin is FILE's content."""

    name: str
    files: dict[str, bytes] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    broken: bool = False
    """Its verify refuses every value (a consumer that does not take the new secret)."""
    refuse_writes: bool = False

    def put_file(self, path: str, content: Any, mode=None, owner=None, group=None, expect=None) -> None:
        if self.refuse_writes:
            raise InfratoolError(f"{self.name}: {path}: read-only file system")
        raw = content.reveal_bytes() if isinstance(content, Secret) else content
        self.files[path] = raw.encode() if isinstance(raw, str) else raw

    def run(
        self, command: str, stdin: Any = None, check: bool = True, what: str | None = None, **_: Any
    ) -> Result:
        self.ran.append(command)
        if command.startswith("check "):
            given = stdin.reveal_bytes().rstrip(b"\n") if stdin is not None else b""
            ok = not self.broken and self.files.get(command.split()[1]) == given
            return Result(0 if ok else 1, "", "" if ok else "login refused")
        return Result(0, "", "")


class FakeStore:
    """A sops store as a dict per file (no encryption): only what the engine and the task call."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo.resolve()
        self.data: dict[str, dict[str, Secret]] = {}
        self.writes = 0
        setattr(self, identity._CHECKED_ATTR, True)  # nothing to check: no real sops here

    def path(self, file: Any) -> Path:
        p = Path(file)
        return p if p.is_absolute() else self.repo / p

    def display(self, file: Any) -> str:
        return str(self.path(file))

    def exists(self, file: Any) -> bool:
        return str(self.path(file)) in self.data

    def invalidate(self, file: Any = None) -> None:
        pass

    def read(self, file: Any, *, missing_ok: bool = False) -> dict[str, Secret]:
        return dict(self.data.get(str(self.path(file)), {}))

    def get(self, file: Any, key: str) -> Secret | None:
        return self.read(file).get(key)

    def write(self, file: Any, values: dict[str, Any]) -> bool:
        self.writes += 1
        current = self.data.setdefault(str(self.path(file)), {})
        for k, v in values.items():
            if v is None:
                current.pop(k, None)
            else:
                current[k] = v
        return True


@dataclass
class World:
    """A fleet repo on disk (inventory, policy, state), its fake sops file and fake hosts."""

    root: Path
    store: FakeStore
    hosts: dict[str, FakeHost]

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def values(self) -> dict[str, str]:
        return {k: v.reveal() for k, v in self.store.read("app.yaml").items()}

    def state(self, name: str) -> state.SecretState:
        return state.load(state.state_path(self.secrets_dir)).get(state.key("secret", name))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "hosts.yaml").write_text(
        "defaults: {flake: .}\nhosts:\n  alpha: {address: 10.0.0.1}\n  beta: {address: 10.0.0.2}\n"
    )
    (tmp_path / "secrets" / "rotation.yaml").write_text(POLICY)
    store = FakeStore(tmp_path / "secrets")
    _fresh_process()
    engine.use_store(store)

    def fault(point: str) -> None:
        if point == faults_wanted.get("point"):
            raise Crash(point)

    faults_wanted: dict[str, str] = {}
    monkeypatch.setattr("infratool.rotation.steps.fault_point", fault)
    monkeypatch.setattr("infratool.rotation.secret.fault_point", fault)
    w = World(tmp_path, store, {n: FakeHost(n) for n in ("alpha", "beta")})
    w.crash_at = faults_wanted  # type: ignore[attr-defined]
    return w


def _fresh_process() -> None:
    """What a new process starts with: no held locks, no cached stores."""
    for path in list(engine._HELD):
        engine.release_lock(path)
    engine._STORES.clear()


def _plain(value: Any) -> bool:
    """Only what a plan file may hold: str, int, float, bool, None, bytes, Secret, lists, str-keyed dicts."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | bytes | Secret)


def plan(world: World, **args: Any) -> list[Change]:
    inv = load_inventory(world.root / "hosts.yaml")
    task = SecretKind().rotate_task(
        inv, args.get("names"), due=args.get("due", False), force=args.get("force", True), lock_wait=0
    )
    assert isinstance(task, RotateSecrets)
    ctx = PlanContext(
        hosts=world.hosts,  # type: ignore[arg-type]
        local=LocalContext(inv.flake),
        inventory=inv,
        options=RunOptions(),
        state={"sops": world.store},
    )
    return task.plan(ctx)


def apply(world: World, changes: list[Change]) -> dict[str, str]:
    """The runner's rules: phase by phase; a change is skipped when its target or a required one failed."""
    failed: dict[str, str] = {}
    local = LocalContext(world.root)
    for phase in sorted({c.phase for c in changes}):
        for c in [c for c in changes if c.phase == phase]:
            if any(t in failed for t in (c.host, *c.requires)):
                continue
            try:
                c.execute(world.hosts.get(c.host, local))
            except InfratoolError as exc:
                failed[c.host] = str(exc)
    return failed


def rotate(world: World, crash: str | None = None, **args: Any) -> dict[str, str]:
    """One run (a fresh process): plan, then apply; ``crash``: die at that fault point."""
    _fresh_process()
    engine.use_store(world.store)
    world.crash_at.clear()  # type: ignore[attr-defined]
    changes = plan(world, **args)
    if crash:
        world.crash_at["point"] = crash  # type: ignore[attr-defined]
    try:
        return apply(world, changes)
    except Crash:
        return {"crashed": crash or ""}
    finally:
        world.crash_at.clear()  # type: ignore[attr-defined]


def test_the_plan_lists_per_host_deliver_and_verify_changes(world: World) -> None:
    changes = plan(world, names=["db/pw"])
    by_op = {(c.op, c.host) for c in changes}
    for host in ("alpha", "beta"):
        assert ("rotation.secret.deliver", host) in by_op and ("rotation.secret.verify", host) in by_op
    ops = [c.op for c in sorted(changes, key=lambda c: c.phase)]
    assert ops[0] == "rotation.begin" and ops[-1] == "rotation.finish"
    assert ops.index("rotation.settle") > max(i for i, o in enumerate(ops) if o == "rotation.secret.verify")
    # Data only: every change is an action plus args, and the new value travels as a Secret.
    assert all(c.is_data for c in changes)
    assert all(_plain(c.args) for c in changes), "args a plan file can store: plain data and Secrets"
    begin = next(c for c in changes if c.op == "rotation.begin")
    new = begin.args["units"][0]["pending"]["_rotation/pending/db/pw"]
    assert isinstance(new, Secret) and new.reveal() not in repr(changes) + "".join(c.diff for c in changes)
    # Applied exactly as planned: the value shown (sealed) in the plan is the one installed.
    assert apply(world, changes) == {}
    assert world.hosts["alpha"].files["/etc/app/pw"] == new.reveal_bytes()
    assert world.values()["db/pw"] == new.reveal()


def test_a_whole_rotation_writes_sops_three_times_for_every_secret_of_a_file(world: World) -> None:
    assert rotate(world) == {}
    first = world.values()
    writes = world.store.writes
    assert rotate(world) == {}
    # begin (both pendings), settle (both promoted): one write each for the file, not per secret.
    assert world.store.writes - writes == 2
    now = world.values()
    assert now["db/pw"] != first["db/pw"] and now["_rotation/previous/db/pw"] == first["db/pw"]
    assert not [k for k in now if k.startswith("_rotation/pending/")]
    assert world.hosts["beta"].files["/etc/app/token"] == now["api/token"].encode()
    assert world.hosts["alpha"].ran.count("systemctl reload app") == 2  # once per rotation
    assert (world.state("db/pw").generation, world.state("db/pw").status) == (2, "ok")


def test_a_failed_verify_rolls_back_only_its_secret(world: World) -> None:
    assert rotate(world) == {}
    before = world.values()
    world.hosts["alpha"].broken = True  # alpha's consumer of db/pw refuses any value
    failed = rotate(world)
    assert len(failed) == 1 and "rotation of db/pw failed: verify failed on alpha: login refused" in str(
        failed
    )
    after = world.values()
    assert after["db/pw"] == before["db/pw"]  # rolled back
    assert after["api/token"] != before["api/token"]  # the other secret of the file still promoted
    assert world.hosts["beta"].files["/etc/app/pw"] == before["db/pw"].encode()
    assert not [k for k in after if k.startswith("_rotation/pending/")]
    assert world.state("db/pw").status == "failed" and world.state("api/token").status == "ok"


def test_a_failed_write_is_reported_and_an_incomplete_rollback_named(world: World) -> None:
    assert rotate(world) == {}
    before = world.values()
    world.hosts["beta"].refuse_writes = True
    failed = str(rotate(world, names=["db/pw"]))
    assert "/etc/app/pw" in failed and "read-only file system" in failed
    assert "ROLLBACK INCOMPLETE on beta" in failed
    assert world.values()["db/pw"] == before["db/pw"]
    assert world.hosts["alpha"].files["/etc/app/pw"] == before["db/pw"].encode()  # alpha is back


def test_first_rotation_that_fails_has_nothing_to_roll_back_to(world: World) -> None:
    world.hosts["beta"].broken = True
    failed = str(rotate(world, names=["api/token"]))
    assert "no previous value to roll back to (first rotation)" in failed
    assert "api/token" not in world.values()


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_after_every_step_converges_on_the_next_run(world: World, step: str) -> None:
    assert rotate(world) == {}
    old = world.values()
    assert rotate(world, crash=step, names=["db/pw"]) == {"crashed": step}
    mid = world.values()
    if step in ("generated",):
        assert mid == old  # nothing stored yet
    assert rotate(world, names=["db/pw"]) == {}
    final = world.values()
    assert not [k for k in final if k.startswith("_rotation/pending/")]
    assert final["db/pw"] != old["db/pw"]
    for host in ("alpha", "beta"):
        assert world.hosts[host].files["/etc/app/pw"] == final["db/pw"].encode()
    if step == "promoted":
        # sops was promoted before the crash: the next run only records it, never rotates twice.
        assert final["_rotation/previous/db/pw"] == old["db/pw"]
    assert world.state("db/pw").status == "ok"


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_a_crash_during_rollback_converges(world: World, step: str) -> None:
    assert rotate(world) == {}
    old = world.values()
    world.hosts["beta"].broken = True
    assert rotate(world, crash=step, names=["db/pw"]) == {"crashed": step}
    failed = str(rotate(world, names=["db/pw"]))
    assert "ROLLBACK INCOMPLETE on beta" in failed  # beta still refuses every value, the old one too
    world.hosts["beta"].broken = False
    final = world.values()
    assert final["db/pw"] == old["db/pw"] and not [k for k in final if k.startswith("_rotation/pending/")]
    assert world.hosts["alpha"].files["/etc/app/pw"] == old["db/pw"].encode()
    assert world.state("db/pw").status == "failed"
    assert rotate(world, names=["db/pw"]) == {}  # fixed: the next run rotates
    assert world.values()["db/pw"] != old["db/pw"]


def test_a_stale_plan_is_refused_and_the_lock_is_held_until_finish(world: World) -> None:
    assert rotate(world) == {}
    stale = plan(world, names=["db/pw"])
    assert rotate(world, names=["db/pw"]) == {}  # another run rotated since that plan was made
    before = world.values()
    failed = apply(world, stale)
    assert "moved on since this plan was made" in str(failed)
    assert world.values() == before
    # The lock: begin takes it, a second holder (another process's flock) is refused, finish frees it.
    changes = plan(world, names=["api/token"])
    begin = [c for c in changes if c.op == "rotation.begin"]
    apply(world, begin)
    lock = lock_path(world.store.path("app.yaml"))
    fd = os.open(lock, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    apply(world, [c for c in changes if c.op != "rotation.begin"])
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    os.close(fd)


def test_status_lists_every_kind_with_age_and_due(world: World) -> None:
    inv = load_inventory(world.root / "hosts.yaml")
    rows = {r.name: r for r in get_kind("secret").status(inv, state.load_dir(world.secrets_dir))}
    assert rows["db/pw"].due and rows["db/pw"].age is None  # never rotated
    assert rotate(world) == {}
    rows = {r.name: r for r in get_kind("secret").status(inv, state.load_dir(world.secrets_dir))}
    row = rows["db/pw"].to_dict()
    assert (row["kind"], row["due"], row["max_age"], row["consumers"]) == (
        "secret",
        False,
        "30d",
        ["alpha", "beta"],
    )
    assert row["age_seconds"] < 60
    assert "secret" in [k.name for k in all_kinds()]


def test_leases_issued_by_a_plan_that_is_not_applied_are_returned(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values are made at plan time; a lease-bearing one (Vault) goes back when the plan is dropped."""
    from infratool.secrets import generators

    issued, revoked = [], []

    def make(params: dict, ctx: generators.GenContext) -> generators.Generated:
        lease = generators.Lease(Secret(f"lease-{len(issued)}"), 3600)
        issued.append(lease.id.reveal())
        return generators.Generated(Secret(f"value-{len(issued)}"), lease=lease)

    leased = generators.Generator(
        "leased", "test stand-in for vault", make, retire=lambda p, lease: revoked.append(lease.id.reveal())
    )
    monkeypatch.setitem(generators.GENERATORS, "leased", leased)
    (world.root / "secrets" / "rotation.yaml").write_text(
        POLICY.replace("generator: hex\n    params: {bytes: 16}", "generator: leased")
    )
    inv = load_inventory(world.root / "hosts.yaml")
    task = SecretKind().rotate_task(inv, ["api/token"], due=False, force=True, lock_wait=0)
    ctx = PlanContext(hosts=world.hosts, local=LocalContext(inv.flake), inventory=inv,  # type: ignore[arg-type]
                      options=RunOptions(), state={"sops": world.store})  # fmt: skip
    task.plan(ctx)
    assert issued == ["lease-0"] and revoked == []
    task.abandon()  # a dry run, or "no" at the prompt
    assert revoked == ["lease-0"]
    # Applied, the lease is kept (it is the new value's), and stored as the current lease.
    assert rotate(world, names=["api/token"]) == {}
    assert revoked == ["lease-0"] and world.values()["_rotation/lease/api/token"] == "lease-1"
