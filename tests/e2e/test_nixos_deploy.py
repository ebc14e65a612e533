"""Issue 14 §1/§3: the deploy engine on NixOS-shaped lab hosts (the stand-in flake of tests/nixos_standin.py).

One lab for the module (four hosts, os: nixos, sshd of slax on 2222); the
tests run in order on it, each starting from the converged state the
previous one left. The controller's HOME holds a **poisoned**
``~/.ssh/known_hosts`` (wrong keys for every lab address): had any ssh of
the deploy read it, the deploy would fail; it must also stay unchanged.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml
from helpers import Cli
from infratool_lab import Lab, LabUnavailable
from nixos_standin import set_knobs, write_flake

from infratool import inventory as inventory_mod
from infratool import nixgen
from infratool.remote import Remote
from infratool.tasks.base import TASKS, Param, PlanContext, Task, register
from infratool.tasks.nix_settings import local_file_change

POISON = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
NIX_CONFIG = "build-users-group =\nsandbox = false\nsubstituters =\n"
PROFILE = "/nix/var/nix/profiles/system"
HOSTS = ["snix", "slax", "brix", "nixtv-player"]


def _subnet() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return f"127.{10 + (int(worker) if worker.isdigit() else 0) % 240}.{random.SystemRandom().randrange(256)}"


@pytest.fixture(scope="module")
def nixos(tmp_path_factory):
    """A four-host lab whose hosts are os: nixos, with the stand-in flake; torn down after the module."""
    root = tmp_path_factory.mktemp("nixos-lab")
    try:
        Lab(root).preflight()
    except LabUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no lab on this CI machine: {exc}")
        pytest.skip(f"no lab on this machine: {exc}")
    lab = Lab(root, subnet=_subnet())
    lab.up(4)
    try:
        lab.set_port("slax", 2222)  # real fleets: sshd on 2222; ssh-ng:// URIs cannot carry a port
        data = yaml.safe_load(lab.inventory_path.read_text())
        for name in HOSTS:
            data["hosts"][name]["os"] = "nixos"
        lab.inventory_path.write_text(yaml.safe_dump(data))
        write_flake(lab.flake_dir, HOSTS)
        home = root / "home"
        (home / ".ssh").mkdir(parents=True)
        poisoned = "".join(f"{h.address} {POISON}\n[{h.address}]:{h.port} {POISON}\n" for h in lab.hosts())
        (home / ".ssh" / "known_hosts").write_text(poisoned)
        lab.home = home  # type: ignore[attr-defined]
        lab.poisoned = poisoned  # type: ignore[attr-defined]
        # Every test starts from deployed hosts (a generation to roll back to), in whatever
        # order or worker (pytest-xdist) it runs: a first deploy through the engine.
        first = playbook(root, 1)
        done = Cli(root)("-i", lab.inventory_path, "run", first, "--yes", env=env(lab), timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield lab
    finally:
        lab.down()


def playbook(tmp: Path, value: int) -> Path:
    """nix.settings on every host: on NixOS, a generated module in the flake, then a deploy."""
    path = tmp / f"nix-{value}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "nix",
                "hosts": "all",
                "tasks": [{"task": "nix.settings", "with": {"settings": {"max-jobs": value}}}],
            }
        )
    )
    return path


def env(lab) -> dict[str, str]:
    return {"HOME": str(lab.home), "NIX_CONFIG": NIX_CONFIG}


def remote_out(lab, name: str, command: str) -> str:
    """``command``'s output on ``name``, over SSH with the pinned key (the host may have a new sshd)."""
    host = inventory_mod.load(lab.inventory_path).hosts[name]
    with Remote(host, connect_timeout=5) as r:
        return r.run(command).stdout.strip()


def system_of(lab, name: str) -> tuple[str, str, str]:
    """(running system, profile target, boot default) of a host."""
    out = remote_out(
        lab,
        name,
        f"readlink -f /run/current-system; readlink -f {PROFILE}; readlink -f /var/lib/standin-boot/default",
    )
    lines = [*out.splitlines(), "", "", ""]
    return lines[0], lines[1], lines[2]


def run(cli: Cli, lab, book: Path, *extra: str, timeout: float = 300):
    return cli("-i", lab.inventory_path, "run", book, "--yes", *extra, env=env(lab), timeout=timeout)


def test_site_converges_every_host_deployed_in_parallel_then_zero_deploys(nixos, cli, tmp_path):
    book = playbook(tmp_path, 3)
    plan = cli("-i", nixos.inventory_path, "plan", book, env=env(nixos))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    for name in HOSTS:
        assert f"hosts/{name}/generated/nix-settings.nix" in plan.stdout
        assert f"deploy {name}: build, copy, activate, verify, commit" in plan.stdout
    result = run(cli, nixos, book)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in HOSTS:
        running, profile, boot = system_of(nixos, name)
        assert running.endswith(f"-nixos-system-{name}"), running
        assert running == profile == boot
        assert "max-jobs = 3" in remote_out(nixos, name, "cat /run/current-system/configuration")
    again = cli("-i", nixos.inventory_path, "plan", book, "--json", env=env(nixos))
    assert again.returncode == 0, again.stderr
    assert (
        '"changes": []' in again.stdout.replace("\n", "").replace("  ", "") or '"changes": 0' in again.stdout
    )
    assert "deploy" not in again.stdout.split('"summary"')[0]
    # Never read (the poisoned keys would have refused every host), never written.
    assert (nixos.home / ".ssh" / "known_hosts").read_text() == nixos.poisoned
    assert sorted(os.listdir(nixos.home / ".ssh")) == ["known_hosts"]


def test_a_generation_that_stops_sshd_is_rolled_back_by_the_host_itself(nixos, cli, tmp_path):
    before = {name: system_of(nixos, name)[0] for name in HOSTS}
    set_knobs(nixos.flake_dir, "brix", "break-sshd")
    try:
        result = run(cli, nixos, playbook(tmp_path, 4), "--confirm-timeout", "6")
    finally:
        set_knobs(nixos.flake_dir, "brix")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "brix" in result.stdout and "did not answer on the pinned key" in result.stdout + result.stderr
    assert "rolled back" in result.stdout + result.stderr
    # brix answers again on its pinned key, running what it ran before, its profile reset.
    running, profile, boot = system_of(nixos, "brix")
    assert running == before["brix"] == profile == boot
    for name in ("snix", "slax", "nixtv-player"):  # the others deployed
        running, profile, boot = system_of(nixos, name)
        assert running != before[name] and running == profile == boot
    # brix stays pending: the next run deploys it (and only it) and converges.
    again = run(cli, nixos, playbook(tmp_path, 4))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "deploy brix" in again.stdout and "deploy snix" not in again.stdout
    assert "max-jobs = 4" in remote_out(nixos, "brix", "cat /run/current-system/configuration")


def test_kill_9_between_test_and_boot_the_watchdog_rolls_back_and_the_next_run_converges(
    nixos, cli, tmp_path
):
    before = system_of(nixos, "slax")[0]
    book = playbook(tmp_path, 5)
    proc = cli.start(
        "-i",
        nixos.inventory_path,
        "run",
        book,
        "--yes",
        "--limit",
        "slax",
        "--confirm-timeout",
        "5",
        env=env(nixos),
    )
    status = nixos.host("slax").path("/run/infratool-deploy/status")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if status.exists() and status.read_text().startswith("activated"):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("slax never reached 'activated'")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert system_of(nixos, "slax")[0] != before  # activated, not committed
    deadline = time.monotonic() + 60
    while not status.read_text().startswith("rolled-back") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status.read_text().startswith("rolled-back"), status.read_text()
    running, profile, boot = system_of(nixos, "slax")
    assert running == before == profile == boot
    again = run(cli, nixos, book, "--limit", "slax")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "pending" in again.stdout or "deploy slax" in again.stdout
    assert "max-jobs = 5" in remote_out(nixos, "slax", "cat /run/current-system/configuration")
    plan = cli(
        "-i", nixos.inventory_path, "plan", book, "--limit", "slax", "--detailed-exitcode", env=env(nixos)
    )
    assert plan.returncode == 0, plan.stdout


def test_a_failed_activation_rolls_back_and_fails_only_that_host(nixos, cli, tmp_path):
    before = {name: system_of(nixos, name)[0] for name in HOSTS}
    set_knobs(nixos.flake_dir, "nixtv-player", "fail-activation")
    try:
        result = run(cli, nixos, playbook(tmp_path, 16))
    finally:
        set_knobs(nixos.flake_dir, "nixtv-player")
    assert result.returncode == 1
    assert "switch-to-configuration test exited 1" in result.stdout + result.stderr
    running, profile, boot = system_of(nixos, "nixtv-player")
    assert running == before["nixtv-player"] == profile == boot
    for name in ("snix", "slax", "brix"):
        assert system_of(nixos, name)[0] != before[name]


class RunningSystemHasMarker(Task):
    """Test task: a generated module per NixOS host, verified on the running system after the deploy."""

    name = "test.deploy_marker"
    summary = "generated marker module, verified in /run/current-system"
    host_local = True
    params = {"value": Param(str, required=True)}

    def plan(self, ctx: PlanContext) -> list:
        changes = []
        for hctx in ctx.hosts.values():
            content = nixgen.module({"environment.etc.marker.text": self.args["value"]})
            rel = f"hosts/{hctx.name}/generated/marker.nix"
            changes += local_file_change(ctx.local, self.name, rel, content, deploy=hctx.name)
        return changes

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        problems = {}
        for name in changed & set(ctx.hosts):  # "local" (the flake repo) is not a host to check
            text = ctx.hosts[name].run("cat /run/current-system/configuration", check=False).stdout
            if self.args["value"] not in text:
                problems[name] = f"the running system lacks marker {self.args['value']!r}"
            else:
                ctx.prove(name, "marker in the running system")
        return problems


@pytest.fixture
def marker_task():
    """Register the test-only task for one test (never at import: docs/tasks.md lists the registry)."""
    register(RunningSystemHasMarker)
    yield RunningSystemHasMarker
    TASKS.pop(RunningSystemHasMarker.name, None)


def test_a_failing_verify_rolls_back_that_host_and_only_that_host(nixos, tmp_path, monkeypatch, marker_task):
    from infratool import playbook as pb
    from infratool.options import RunOptions
    from infratool.runner import Runner

    monkeypatch.setenv("HOME", str(nixos.home))
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    book = tmp_path / "marker.yaml"
    task = {"task": "test.deploy_marker", "with": {"value": "marker-one"}}
    book.write_text(yaml.safe_dump({"name": "marker", "hosts": "all", "tasks": [task]}))
    inv = inventory_mod.load(nixos.inventory_path)
    before = {name: system_of(nixos, name)[0] for name in HOSTS}
    set_knobs(nixos.flake_dir, "snix", "drop-config")
    try:
        with Runner(inv, pb.load(book, inv), RunOptions(yes=True, confirm_timeout=20)) as runner:
            result = runner.apply(runner.plan())
    finally:
        set_knobs(nixos.flake_dir, "snix")
    snix = result.hosts["snix"]
    assert snix.status == "failed", result.to_dict()
    assert "verify failed" in (snix.error or "") and "lacks marker" in (snix.error or "")
    assert "rolled back" in (snix.error or "")
    running, profile, boot = system_of(nixos, "snix")
    assert running == before["snix"] == profile == boot  # the previous generation, active and default
    for name in ("slax", "brix", "nixtv-player"):
        assert result.hosts[name].status == "changed", result.to_dict()
        assert "marker in the running system" in result.hosts[name].verified
        assert system_of(nixos, name)[0] != before[name]
    assert result.exit_code == 1


def test_a_pending_host_whose_closure_is_there_is_redeployed_without_a_copy(nixos, cli, tmp_path):
    # A deploy that did not commit leaves its host pending; the closure is on the host already.
    book = tmp_path / "marker.yaml"
    task = {"task": "nix.settings", "with": {"settings": {"max-jobs": 26}}}
    book.write_text(yaml.safe_dump({"name": "nix", "hosts": "all", "tasks": [task]}))
    assert run(cli, nixos, book).returncode == 0
    (nixos.flake_dir / ".infratool" / "deploy-pending").mkdir(parents=True, exist_ok=True)
    (nixos.flake_dir / ".infratool" / "deploy-pending" / "brix").touch()
    plan = cli("-i", nixos.inventory_path, "plan", book, env=env(nixos))
    assert "deploy brix" in plan.stdout and "pending from an earlier run" in plan.stdout
    again = cli("-i", nixos.inventory_path, "-v", "run", book, "--yes", env=env(nixos))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "closure already there" in again.stderr and "deploy: copied" not in again.stderr
    assert not (nixos.flake_dir / ".infratool" / "deploy-pending" / "brix").exists()
    empty = cli("-i", nixos.inventory_path, "plan", book, "--detailed-exitcode", env=env(nixos))
    assert empty.returncode == 0, empty.stdout


def test_build_on_builds_in_the_builders_store_and_copies_from_there(nixos, cli, tmp_path):
    book = playbook(tmp_path, 9)
    result = run(cli, nixos, book, "--limit", "slax", "--build-on", "snix")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "deploy slax: build on snix" in result.stdout or "built on snix" in result.stdout
    running = system_of(nixos, "slax")[0]
    assert "max-jobs = 9" in remote_out(nixos, "slax", "cat /run/current-system/configuration")
    # Built in snix's store (the builder), and never realised in the controller's.
    assert remote_out(nixos, "snix", f"nix-store --check-validity {running} && echo valid") == "valid"
    assert not Path(running).exists()
    bad = cli("-i", nixos.inventory_path, "run", book, "--yes", "--build-on", "nosuch", env=env(nixos))
    assert bad.returncode == 3 and "--build-on 'nosuch'" in bad.stderr


def test_the_closure_travels_over_the_runs_own_connection(nixos, cli, tmp_path):
    """No `nix copy` ssh of its own: brix sees the run's connection and the confirmation's, nothing else."""
    brix = nixos.host("brix")
    brix.sshd_log.write_text("")
    result = run(cli, nixos, playbook(tmp_path, 27), "--limit", "brix")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = brix.sshd_log.read_text()
    # Two connections: the run's and the confirmation's (a new one, by design);
    # before, nix copy's own ssh made a third.
    assert log.count("Accepted key") == 2, log[-3000:]
    running = system_of(nixos, "brix")[0]
    assert "max-jobs = 27" in remote_out(nixos, "brix", "cat /run/current-system/configuration")
    assert remote_out(nixos, "brix", f"nix-store --check-validity {running} && echo valid") == "valid"
