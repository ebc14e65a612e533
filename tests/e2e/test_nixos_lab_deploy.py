"""Issue 14 §3 on `lab up --nixos` hosts (the lab's module system, real toplevels): a playbook converges.

The generated ``nix.settings`` module is evaluated by the lab's module
system into the host's ``/etc/nix/nix.conf``; the engine builds, copies,
activates under the watchdog, confirms and commits every host in parallel
(every host's deploy was under way before the first one finished), and a
second plan has 0 changes and 0 deploys.
The controller's ``~/.ssh/known_hosts`` is poisoned: it is neither read nor
written.
"""

from __future__ import annotations

import json
import re

import yaml
from infratool_lab import nixos as labnixos

POISON = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
HOSTS = ["snix", "slax", "brix", "nixtv-player"]


def _watchdog_window(lab, name: str) -> tuple[float, float]:
    """(when the watchdog started, when it committed) on ``name``, from its log."""
    lines = lab.host(name).path("/run/infratool-deploy/log").read_text().splitlines()
    start = [float(ln.split()[0]) for ln in lines if " watchdog " in ln][-1]
    commit = [float(ln.split()[0]) for ln in lines if ln.endswith(" committed")][-1]
    return start, commit


def test_a_nixos_lab_converges_deploying_every_host_in_parallel(lab_factory, cli, tmp_path):
    lab = lab_factory(4, nixos=True)
    lab.set_port("slax", 2222)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    poisoned = "".join(f"{h.address} {POISON}\n[{h.address}]:{h.port} {POISON}\n" for h in lab.hosts())
    (home / ".ssh" / "known_hosts").write_text(poisoned)
    env = {"HOME": str(home), "NIX_CONFIG": labnixos.CONTROLLER_NIX_CONFIG}
    book = tmp_path / "nix.yaml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "nix",
                "hosts": "all",
                "tasks": [{"task": "nix.settings", "with": {"settings": {"max-jobs": 7, "cores": 2}}}],
            }
        )
    )
    before = {n: lab.exec(n, "readlink -f /run/current-system").stdout.decode().strip() for n in HOSTS}
    run = cli("-i", lab.inventory_path, "run", book, "--yes", env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for name in HOSTS:
        assert f"deploy {name}: build, copy, activate, verify, commit" in run.stdout
        conf = lab.exec(name, "cat /etc/nix/nix.conf", check=True).stdout.decode()
        assert "max-jobs = 7" in conf and "cores = 2" in conf, conf
        now = lab.exec(name, "readlink -f /run/current-system").stdout.decode().strip()
        assert now != before[name]
        profile = lab.exec(name, f"readlink -f {labnixos.PROFILE}").stdout.decode().strip()
        assert profile == now
    # In parallel, proved by order, not by time: every host's deploy was under way
    # before the first one finished (a host after host runner finishes one first).
    events = run.stderr.splitlines()
    started = [i for i, ln in enumerate(events) if re.search(r"\] (\S+): applying deploy \1:", ln)]
    hosts = "|".join(map(re.escape, HOSTS))
    finished = [i for i, ln in enumerate(events) if re.search(rf"\] ({hosts}): changed ", ln)]
    assert len(started) == len(HOSTS) and finished, run.stderr[-3000:]
    assert max(started) < min(finished), [events[i] for i in (*started, *finished)]
    for name in HOSTS:  # and each one's watchdog started, then committed
        start, commit = _watchdog_window(lab, name)
        assert start < commit
    plan = cli("-i", lab.inventory_path, "plan", book, "--json", "--detailed-exitcode", env=env)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert json.loads(plan.stdout)["changes"] == []
    assert (home / ".ssh" / "known_hosts").read_text() == poisoned
    assert sorted(p.name for p in (home / ".ssh").iterdir()) == ["known_hosts"]
