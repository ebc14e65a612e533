"""Rotation to NixOS consumers through sops-nix: write → deploy (test) → verify → commit (boot) → promote.

A two-host lab: slax is NixOS-shaped and runs tokend as a NixOS unit that
reads its token from ``/run/secrets/tokend/token`` (installed by the lab's
sops-nix activation, restarted through ``restartUnits``); snix is an
``os: linux`` host whose app gets the same token as a file over SSH and
verifies it against slax's tokend. Real sops, real Nix builds, real
profiles and the deploy engine's watchdog; the lab's module system and
activation are the stand-ins described in docs/nixos-lab.md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import PLAYBOOKS, files_containing
from exectrace import both_ends
from helpers import tokend_accepts, wait_for
from infratool_lab import nixos as labnixos
from infratool_lab import services
from infratool_lab.services import add_nixos_recipients

from infratool.rotation.sopsnix import MODULE
from infratool.secrets.store import SopsStore

PORT = services.TOKEND_PORT
NIXOS_STEPS = ["stored", "written", "activated", "verified", "committed", "promoting", "promoted"]

CONFIG = """{{ ... }}:
{{
  systemd.services.tokend = {{
    description = "tokend: HTTP that demands the bearer token sops-nix installs";
    wantedBy = [ "multi-user.target" ];
    script = "exec /usr/bin/python3 /var/lib/tokend/tokend.py --token-file /run/secrets/tokend/token --listen {address}:{port} --pid-file /run/tokend.pid";
  }};
}}
"""


def policy(lab) -> str:
    slax = lab.host("slax").address
    bearer = "printf 'Authorization: Bearer %s\\n'"
    url = f"http://{slax}:{PORT}/"
    return yaml.safe_dump(
        {
            "secrets": {
                "tokend/token": {
                    "file": "secrets/lab.yaml",
                    "generator": "hex",
                    "params": {"bytes": 24},
                    "max_age": "7d",
                    "consumers": [
                        {
                            "host": "slax",
                            "file": {"path": "/run/secrets/tokend/token", "mode": "0400"},
                            "units": ["tokend.service"],
                            "verify": f'read -r t && {bearer} "$t" | curl -fsS -o /dev/null -H @- {url}',
                        },
                        {
                            "host": "snix",
                            "file": {"path": "/var/lib/app/token", "mode": "0600"},
                            "verify": f'{bearer} "$(cat /var/lib/app/token)" | curl -fsS -o /dev/null -H @- {url}',
                        },
                    ],
                }
            }
        }
    )


@pytest.fixture
def nixlab(lab_factory, monkeypatch):
    """snix (linux) + slax (NixOS, tokend as a unit), the flake's secrets and the policy."""
    from infratool.onboard.scaffold import ensure_operator_repo

    lab = lab_factory(2, nixos=["slax"])
    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    # A Debian controller's Nix builds the lab flake with these settings (no nixbld group, no substituters).
    monkeypatch.setenv("NIX_CONFIG", labnixos.CONTROLLER_NIX_CONFIG)
    assert add_nixos_recipients(lab)
    script = lab.host("slax").path("/var/lib/tokend/tokend.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(Path(services.__file__).with_name("tokend.py").read_text())
    (lab.flake_dir / "hosts" / "slax" / "configuration.nix").write_text(
        CONFIG.format(address=lab.host("slax").address, port=PORT)
    )
    (lab.flake_dir / "secrets" / "rotation.yaml").write_text(policy(lab))
    return lab


def values(lab) -> dict[str, str]:
    s = SopsStore(lab.flake_dir / "secrets")
    if not s.exists("lab.yaml"):
        return {}
    return {k: str(v.reveal()) for k, v in s.read("lab.yaml").items()}


def rotate(cli, lab, *args, env=None):
    return cli("-i", lab.inventory_path, "secrets", "rotate", *args, env=env)


def on_slax(lab, command: str) -> str:
    return lab.exec("slax", command, check=True).stdout.decode().strip()


def installed(lab) -> str:
    """What sops-nix installed on slax."""
    return on_slax(lab, "cat /run/secrets/tokend/token")


def system(lab) -> tuple[str, str]:
    """slax's running system and its system profile's generation link."""
    return on_slax(lab, "readlink -f /run/current-system"), on_slax(
        lab, "readlink /nix/var/nix/profiles/system"
    )


def previous_generation(lab) -> str:
    """The store path of slax's generation before the current one."""
    links = on_slax(lab, "ls -d /nix/var/nix/profiles/system-*-link | sort -t- -k2 -n").split()
    return on_slax(lab, f"readlink -f {links[-2]}")


def test_the_new_value_reaches_run_secrets_through_sops_nix_and_the_old_is_rejected(nixlab, cli):
    lab = nixlab
    first = rotate(cli, lab, "--due", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    old = values(lab)["tokend/token"]
    assert installed(lab) == old and tokend_accepts(lab, old)

    r = rotate(cli, lab, "tokend/token", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    now = values(lab)
    new = now["tokend/token"]
    assert new != old and now["_rotation/previous/tokend/token"] == old
    assert not any(k.startswith("_rotation/pending/") for k in now)
    # sops-nix's activation put it in /run/secrets with the consumer's mode, and the
    # real service (restarted by restartUnits) takes the new token and refuses the old.
    assert installed(lab) == new
    assert on_slax(lab, "stat -L -c %a /run/secrets/tokend/token") == "400"
    assert tokend_accepts(lab, new) and not tokend_accepts(lab, old)
    # The linux consumer of the same secret got it over SSH.
    assert lab.host("snix").path("/var/lib/app/token").read_text() == new
    # The generation was committed: the boot default is the running system.
    running, _ = system(lab)
    assert on_slax(lab, "readlink -f /nix/var/nix/profiles/system") == running

    # The generated module names the key, the path and the unit, never a value.
    module = (lab.flake_dir / "hosts" / "slax" / "generated" / MODULE).read_text()
    assert 'sops.secrets = {\n    "tokend/token"' in module.replace("  sops.secrets", "sops.secrets")
    assert '"tokend.service"' in module and "../../../secrets/lab.yaml" in module
    for value in (old, new):
        assert value not in module
        assert value not in r.stdout + r.stderr
        grep = lab.exec("slax", ["grep", "-rl", value, "/nix/store", "/var/log", "/etc/nix"])
        assert grep.stdout == b"", grep.stdout
    assert not (lab.flake_dir / "hosts" / "snix" / "generated" / MODULE).exists()

    # Converged: the rotation playbook plans nothing, no deploy either.
    plan = cli("-i", lab.inventory_path, "plan", PLAYBOOKS / "secrets-rotation.yaml", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr

    # secrets check: both consumers hold and accept the current value.
    check = cli("-i", lab.inventory_path, "--json", "secrets", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    found = {f["host"]: f["status"] for f in json.loads(check.stdout)["findings"]}
    assert found == {"slax": "ok", "snix": "ok"}
    # Someone reactivates slax's previous generation by hand: sops-nix puts the old token back
    # and tokend restarts with it. The check names slax (another value installed) and snix
    # (its token is refused now), and nothing is written.
    on_slax(lab, f"{previous_generation(lab)}/bin/switch-to-configuration test")
    assert installed(lab) == old
    sops_before = (lab.flake_dir / "secrets" / "lab.yaml").read_bytes()
    check = cli("-i", lab.inventory_path, "--json", "secrets", "check")
    assert check.returncode == 1, check.stdout + check.stderr
    found = {f["host"]: f for f in json.loads(check.stdout)["findings"]}
    assert (
        found["slax"]["status"] == "rejected" and "does not hold the current value" in found["slax"]["detail"]
    )
    assert found["snix"]["status"] == "rejected"
    assert (lab.flake_dir / "secrets" / "lab.yaml").read_bytes() == sops_before
    assert old not in check.stdout + check.stderr and new not in check.stdout + check.stderr


def test_a_failed_verify_returns_every_host_to_the_previous_generation_and_value(nixlab, cli):
    lab = nixlab
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    old = values(lab)["tokend/token"]
    before = system(lab)
    module = (lab.flake_dir / "hosts" / "slax" / "generated" / MODULE).read_text()
    # snix's app refuses any new token (it only knows the old one): the verify fails there,
    # after slax activated the new generation and verified it.
    _refuse_new_tokens_on_snix(lab, old)

    r = rotate(cli, lab, "tokend/token", "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "verify failed on snix" in r.stdout + r.stderr
    after = values(lab)
    assert after["tokend/token"] == old
    assert not any(k.startswith("_rotation/pending/") for k in after)
    # slax is back on the generation it ran before, with the old value, and tokend takes it.
    assert system(lab) == before
    assert installed(lab) == old and tokend_accepts(lab, old)
    assert lab.host("snix").path("/var/lib/app/token").read_text() == old
    assert (lab.flake_dir / "hosts" / "slax" / "generated" / MODULE).read_text() == module


def _refuse_new_tokens_on_snix(lab, old: str) -> None:
    """A second consumer on snix that only accepts ``old``: every new value fails to verify there."""
    path = lab.flake_dir / "secrets" / "rotation.yaml"
    pol = yaml.safe_load(path.read_text())
    pol["secrets"]["tokend/token"]["consumers"].append(
        {
            "host": "snix",
            "file": {"path": "/var/lib/app/other"},
            "verify": f'[ "$(cat /var/lib/app/other)" = "{old}" ]',
        }
    )
    path.write_text(yaml.safe_dump(pol))


@pytest.mark.parametrize("step", NIXOS_STEPS)
def test_kill_9_after_each_step_converges(nixlab, cli, step):
    lab = nixlab
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    old = values(lab)["tokend/token"]

    crashed = rotate(cli, lab, "tokend/token", "--yes", env={"INFRATOOL_FAULT": step})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr

    again = rotate(cli, lab, "--due", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    final = values(lab)
    current = final["tokend/token"]
    assert not any(k.startswith("_rotation/pending/") for k in final)
    # sops, sops-nix's /run/secrets, the real service and the linux consumer agree.
    assert installed(lab) == current and tokend_accepts(lab, current)
    assert lab.host("snix").path("/var/lib/app/token").read_text() == current
    # Every step comes after the pending value was stored: the next run finishes the rotation.
    assert current != old and final["_rotation/previous/tokend/token"] == old
    assert not tokend_accepts(lab, old)
    running, _ = system(lab)
    assert on_slax(lab, "readlink -f /nix/var/nix/profiles/system") == running
    status = cli("-i", lab.inventory_path, "--json", "secrets", "status")
    assert '"status": "ok"' in status.stdout


def test_kill_9_while_the_watchdog_waits_the_host_rolls_itself_back_and_the_next_run_converges(nixlab, cli):
    lab = nixlab
    before = system(lab)
    book = PLAYBOOKS / "secrets-rotation.yaml"
    # The first rotation (never rotated: due), killed once slax runs the new generation under
    # its watchdog; a short --confirm-timeout so the host gives up soon.
    crashed = cli(
        "-i", lab.inventory_path, "run", book, "--yes", "--confirm-timeout", "5",
        env={"INFRATOOL_FAULT": "activated"},
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    status = "cat /run/infratool-deploy/status"
    wait_for(
        lambda: on_slax(lab, status).startswith("rolled-back"), timeout=180, what="slax rolls itself back"
    )
    assert "not confirmed within" in on_slax(lab, status)
    # Nobody confirmed: slax is back on the system it ran before, which has no tokend unit
    # (so it was stopped). /run/secrets keeps its last generation, as sops-nix does when a
    # generation has no secrets at all.
    assert system(lab) == before
    assert lab.exec("slax", "test -e /run/lab-services/tokend.pid").returncode != 0

    again = rotate(cli, lab, "--due", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    final = values(lab)
    assert not any(k.startswith("_rotation/pending/") for k in final)
    assert installed(lab) == final["tokend/token"] and tokend_accepts(lab, final["tokend/token"])
    assert lab.host("snix").path("/var/lib/app/token").read_text() == final["tokend/token"]


def pg_login(lab, password: str) -> bool:
    address = lab.host("slax").address
    r = lab.exec(
        "slax",
        f"read -r PGPASSWORD; export PGPASSWORD; psql 'host={address} user=app dbname=postgres' -tAc 'select 1'",
        input=password.encode() + b"\n",
    )
    return r.returncode == 0 and r.stdout.strip() == b"1"


def test_a_command_consumer_becomes_a_oneshot_unit_fed_from_run_secrets(nixlab, cli):
    """PostgreSQL on the NixOS host: the password reaches it through a oneshot unit sops-nix restarts."""
    lab = nixlab
    services.start_postgres(lab, "slax")
    path = lab.flake_dir / "secrets" / "rotation.yaml"
    pol = yaml.safe_load(path.read_text())
    address = lab.host("slax").address
    pol["secrets"]["postgres/app"] = {
        "file": "secrets/lab.yaml",
        "generator": "password",
        "params": {"length": 32},
        "consumers": [
            {
                "host": "slax",
                "command": {
                    "run": "runuser -u postgres -- psql -h /run/postgresql -v ON_ERROR_STOP=1 -q -f -",
                    "stdin": "ALTER ROLE app PASSWORD '{value}';",
                },
                "verify": "read -r PGPASSWORD && export PGPASSWORD && "
                f"psql 'host={address} user=app dbname=postgres' -tAc 'select 1' | grep -qx 1",
            }
        ],
    }
    path.write_text(yaml.safe_dump(pol))
    first = rotate(cli, lab, "postgres/app", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    old = values(lab)["postgres/app"]
    assert pg_login(lab, old)

    r = rotate(cli, lab, "postgres/app", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    new = values(lab)["postgres/app"]
    assert new != old and pg_login(lab, new) and not pg_login(lab, old)

    module = (lab.flake_dir / "hosts" / "slax" / "generated" / MODULE).read_text()
    assert "infratool-secret-postgres-app = {" in module and '"oneshot"' in module
    assert '"infratool-secret-postgres-app.service"' in module  # in the secret's restartUnits
    # The unit ran to its end and counts as active; its script (in the store) names the
    # secret's path, never the value.
    assert lab.exec("slax", "test -e /run/lab-services/infratool-secret-postgres-app.done").returncode == 0
    for value in (old, new):
        assert value not in module
        grep = lab.exec("slax", ["grep", "-rl", value, "/nix/store", "/var/log"])
        assert grep.stdout == b"", grep.stdout


def test_canary_values_never_leak_on_the_nixos_path(nixlab, cli, tmp_path, _private_audit_log):
    """Every exec on the controller and the hosts recorded: no value in argv, env, output, files or Nix."""
    lab = nixlab
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        first = rotate(seen.cli, lab, "--due", "--yes")
        plan = rotate(seen.cli, lab, "tokend/token", "--dry-run")
        run = seen.cli("-i", lab.inventory_path, "-vv", "secrets", "rotate", "tokend/token", "--yes")
    assert first.returncode == 0 and run.returncode == 0, first.stderr + run.stderr
    seen.assert_recorded(min_sessions=4)
    assert seen.controller.containing("nix")  # the recorder saw the build and the copy
    assert [x for x in seen.hosts.execs if x.argv[0].endswith(b"sops")]  # and sops-nix's decryption
    vals = values(lab)
    canaries = [vals["tokend/token"], vals["_rotation/previous/tokend/token"]]
    outputs = [first.stdout, first.stderr, plan.stdout, plan.stderr, run.stdout, run.stderr]
    logs = [_private_audit_log.read_text()] + [h.sshd_log.read_text() for h in lab.hosts()]
    generated = "".join(p.read_text() for p in lab.flake_dir.glob("hosts/*/generated/*.nix"))
    for canary in canaries:
        assert len(canary) >= 32
        assert not [o for o in outputs + logs if canary in o]
        assert canary not in generated
        assert seen.hits(canary) == [], "a secret in some process's argv or environment"
        assert files_containing(tmp_path / "controller-tmp", canary) == []
        for h in lab.hosts():
            assert files_containing(h.path("/tmp"), canary) == []
        grep = lab.exec("slax", ["grep", "-rl", canary, "/nix/store", "/var/log", "/run/infratool-deploy"])
        assert grep.stdout == b"", grep.stdout
        assert canary not in (lab.flake_dir / "secrets" / "lab.yaml").read_text()


def test_the_generated_module_is_committed_with_the_rotation(nixlab, cli):
    """In a git fleet repo the rotation's commit holds the sops file and slax's sops-nix module."""
    lab = nixlab
    flake = lab.flake_dir

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=flake, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (flake / ".gitignore").write_text("secrets/.*.lock\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fleet")
    r = rotate(cli, lab, "--due", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    committed = git("show", "--name-only", "--format=", "HEAD").split()
    assert f"hosts/slax/generated/{MODULE}" in committed and "secrets/lab.yaml" in committed
    assert git("status", "--porcelain", "--untracked-files=all") == ""


def test_kill_9_during_the_rollback_converges(nixlab, cli):
    """Killed half-way through a rollback: the next run rolls back all the way, slax included."""
    lab = nixlab
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    old = values(lab)["tokend/token"]
    before = system(lab)[0]
    _refuse_new_tokens_on_snix(lab, old)
    crashed = rotate(cli, lab, "tokend/token", "--yes", env={"INFRATOOL_FAULT": "rolled-back-one"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr

    again = rotate(cli, lab, "tokend/token", "--yes")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "every consumer is back on the current value" in again.stdout + again.stderr
    final = values(lab)
    assert final["tokend/token"] == old and not any(k.startswith("_rotation/pending/") for k in final)
    assert installed(lab) == old and tokend_accepts(lab, old)
    assert system(lab)[0] == before
    assert lab.host("snix").path("/var/lib/app/token").read_text() == old


def test_a_saved_plan_rotates_through_sops_nix_as_shown(nixlab, cli, tmp_path):
    """`plan -o` then `apply`: the value generated at plan time (sealed in the file) is the one installed."""
    lab = nixlab
    plan_file = tmp_path / "rotation.plan.json"
    book = PLAYBOOKS / "secrets-rotation.yaml"
    planned = cli("-i", lab.inventory_path, "plan", book, "-o", plan_file)
    assert planned.returncode in (0, 2), planned.stdout + planned.stderr
    assert values(lab) == {}  # planning wrote nothing
    applied = cli("-i", lab.inventory_path, "apply", plan_file, "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    value = values(lab)["tokend/token"]
    assert installed(lab) == value and tokend_accepts(lab, value)
    assert value not in plan_file.read_text()


def test_a_policy_change_updates_the_module_and_deploys_it_without_rotating(nixlab, cli):
    """Nothing due, but slax's consumer got another unit: the module is rewritten and slax deployed."""
    lab = nixlab
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    value = values(lab)["tokend/token"]
    running = system(lab)[0]
    path = lab.flake_dir / "secrets" / "rotation.yaml"
    pol = yaml.safe_load(path.read_text())
    pol["secrets"]["tokend/token"]["consumers"][0]["units"].append("tokend-metrics.service")
    path.write_text(yaml.safe_dump(pol))

    r = rotate(cli, lab, "--due", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"update hosts/slax/generated/{MODULE}" in r.stdout and "deploy slax" in r.stdout
    assert values(lab)["tokend/token"] == value  # nothing rotated
    module = (lab.flake_dir / "hosts" / "slax" / "generated" / MODULE).read_text()
    assert '"tokend-metrics.service"' in module
    assert system(lab)[0] != running and installed(lab) == value and tokend_accepts(lab, value)
    again = cli("-i", lab.inventory_path, "plan", PLAYBOOKS / "secrets-rotation.yaml", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
