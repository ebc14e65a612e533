"""Hostile values are quoted or refused: no shell injection on the remote.

Paths, contents and guard commands full of shell metacharacters go to real lab
hosts over SSH; every one lands literally (or is refused as input, exit 3),
and the marker files the payloads try to create never appear — on any host
or on the controller.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, SshdLogs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infratool_lab import Lab

from infratool import inventory
from infratool.errors import InputError
from infratool.facts import FactRequest, build_script, parse_output
from infratool.remote import Remote

MARK = f"pwned-{secrets.token_hex(4)}"
"""File every payload tries to create in /tmp (unique per test process)."""

PAYLOADS = [
    f"x'; touch /tmp/{MARK}; '",
    f'x"; touch /tmp/{MARK}; "',
    f"$(touch /tmp/{MARK})",
    f"`touch /tmp/{MARK}`",
    f"a;touch /tmp/{MARK}",
    f"a&&touch /tmp/{MARK}",
    f"a|touch /tmp/{MARK}",
    f"a\ntouch /tmp/{MARK}\n",
    f"\\'$(touch /tmp/{MARK})\\'",
    f"${{IFS}}touch${{IFS}}/tmp/{MARK}",
    "-rf",
    "--",
    " spaced ",
    "*",
    "?[a]",
    "~",
    "!!",
    "#x",
    "é✓",
]


def pwned(lab: Lab) -> list[str]:
    """Where a payload's marker file appeared (every host's private /tmp, the controller's /tmp)."""
    hits = [h.name for h in lab.hosts() if h.path(f"/tmp/{MARK}").exists()]
    return hits + (["controller"] if Path(f"/tmp/{MARK}").exists() else [])


# --- put_file and the file fact over real SSH -------------------------------------------

segment = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(
        st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12
    ),
).filter(lambda s: s not in (".", ".."))
content = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from([p.encode() for p in PAYLOADS]),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.fixture
def snix(lab: Lab):
    remote = Remote(inventory.load(lab.inventory_path)["snix"], command_timeout=30)
    remote.connect()
    yield remote
    remote.close()


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=st.lists(segment, min_size=1, max_size=2), data=content, owned=st.booleans())
def test_put_file_and_file_fact_take_any_path_and_content_literally(lab, snix, parts, data, owned) -> None:
    # The task layer refuses control characters and '..' in paths; this layer must
    # still be safe with anything, newlines included.
    # A fresh directory per example: one example's file may be another's directory.
    path = f"/var/lib/hostile/{secrets.token_hex(4)}/" + "/".join(parts)
    owner = ("nobody", "nogroup") if owned else (None, None)
    snix.put_file(path, data, mode=0o640, owner=owner[0], group=owner[1])
    local = lab.host("snix").path(path)
    assert local.read_bytes() == data
    st_ = local.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o640
    if owned:
        import pwd

        assert pwd.getpwuid(st_.st_uid).pw_name == "nobody"
    # The file fact reads it back exactly (metadata and content), however it is named.
    script, marker, ordered = build_script([FactRequest("file", path), FactRequest("exists", path)])
    facts = parse_output(snix.run(script).stdout, marker, ordered)
    state = facts[FactRequest("file", path)]
    assert state.exists and state.is_file and state.content == data and state.mode == 0o640
    assert facts[FactRequest("exists", path)] is True
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".infratool")], "temp file left"
    assert pwned(lab) == []


# --- through the CLI: quoted where legitimate, refused where not --------------------------


def playbook(tmp_path: Path, tasks: list[dict], name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"hosts": "brix", "tasks": tasks}, allow_unicode=True))
    return path


def test_hostile_paths_contents_and_guards_land_literally(lab, cli, tmp_path) -> None:
    odd_path = f"/var/lib/x'; touch /tmp/{MARK}; '"
    body = "".join(PAYLOADS) + "\0 NUL and \r\n CRLF and trailing backslash \\"
    guarded = "/var/lib/guarded"
    tasks = [
        {"task": "files.content", "with": {"path": odd_path, "content": body}},
        {
            "task": "files.content",
            "with": {"path": "/var/lib/$(id)/`id`/a b", "content": body, "secret": True},
        },
        {
            "task": "nix.settings",
            "with": {"settings": {"extra-sandbox-paths": f"/x'$(touch /tmp/{MARK})'", "cores": 2}},
        },
        # A guard with a comment: it must stay one command, not comment out the rest of the facts script.
        {"task": "command", "with": {"command": f"touch {guarded}", "unless": f"test -e {guarded} # done?"}},
        # A guard that tries to close the subshell it runs in and run something outside.
        {
            "task": "command",
            "with": {"command": "true", "unless": f"false ) ; touch /tmp/{MARK} ; ( false"},
        },
    ]
    pb = playbook(tmp_path, tasks)
    run = cli("-i", lab.inventory_path, "run", pb, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    brix = lab.host("brix")
    assert brix.path(odd_path).read_bytes() == body.encode()
    secret_file = brix.path("/var/lib/$(id)/`id`/a b")
    assert secret_file.read_bytes() == body.encode()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600  # a new secret file without a mode
    assert f"extra-sandbox-paths = /x'$(touch /tmp/{MARK})'" in brix.path("/etc/nix/nix.conf").read_text()
    assert brix.path(guarded).exists()
    assert pwned(lab) == []
    # Everything converged: the guard with a comment now holds, the rest is unchanged.
    again = cli("-i", lab.inventory_path, "plan", pb, "--detailed-exitcode")
    assert "Plan: 1 change(s)" in again.stdout, again.stdout  # only the always-false guard's `true`
    assert pwned(lab) == []


REFUSED_TASKS = [
    ({"task": "files.content", "with": {"path": "/var/lib/a/../../etc/shadow", "content": "x"}}, "'..'"),
    ({"task": "files.content", "with": {"path": "/var/lib/a\nb", "content": "x"}}, "control characters"),
    ({"task": "files.absent", "with": {"path": "/var/lib/a\rb"}}, "control characters"),
    ({"task": "command", "with": {"command": "true", "creates": "/x/../y"}}, "'..'"),
    ({"task": "files.content", "with": {"path": "/x", "content": "x", "owner": "root;id"}}, "invalid user"),
    ({"task": "files.content", "with": {"path": "/x", "content": "x", "mode": "0644;id"}}, "octal mode"),
    ({"task": "nix.settings", "with": {"settings": {"cores": "1\nsandbox = false"}}}, "newline"),
    ({"task": "nix.settings", "with": {"settings": {"a = b": "c"}}}, "invalid setting name"),
    ({"task": "nix.settings", "with": {"settings": {"x": "y"}, "file": "/etc/../x"}}, "'..'"),
]
REFUSED_HOSTS = [
    ("name", f"brix;touch /tmp/{MARK}", "invalid host name"),
    ("name", "$(id)", "invalid host name"),
    ("address", f"127.0.0.1;touch /tmp/{MARK}", "invalid address"),
    ("address", "-oProxyCommand=id", "invalid address"),
    ("user", "root$(id)", "invalid user"),
    ("system", "x86_64-linux;id", "invalid system"),
]


def _hostile_inventory(lab_inventory: Path, field: str, value: str, out: Path) -> Path:
    data = yaml.safe_load(lab_inventory.read_text())
    if field == "name":
        data["hosts"][value] = data["hosts"].pop("brix")
    else:
        data["hosts"]["brix"][field] = value
    out.write_text(yaml.safe_dump(data))
    return out


def test_hostile_values_are_refused_at_their_line(tmp_path) -> None:
    """In process (the CLI path is proven below): each case is an InputError at file:line."""
    from infratool import playbook as playbooks

    lab_inventory = tmp_path / "hosts.yaml"
    lab_inventory.write_text(
        "hosts:\n  brix: {address: 10.0.0.3, host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0}\n"
    )
    inv = inventory.load(lab_inventory)
    for i, (task, message) in enumerate(REFUSED_TASKS):
        pb = playbook(tmp_path, [task], name=f"pb{i}.yaml")
        with pytest.raises(InputError) as err:
            playbooks.load(pb, inv)
        assert message in err.value.message and err.value.file == str(pb) and err.value.line, task
    for i, (field, value, message) in enumerate(REFUSED_HOSTS):
        path = _hostile_inventory(lab_inventory, field, value, tmp_path / f"hosts{i}.yaml")
        with pytest.raises(InputError) as err:
            inventory.load(path)
        assert message in err.value.message and err.value.file == str(path) and err.value.line, value


def test_hostile_values_exit_3_before_contact(lab, cli, tmp_path) -> None:
    before = SshdLogs(lab)
    pb = playbook(tmp_path, [REFUSED_TASKS[0][0]])
    r = cli("-i", lab.inventory_path, "run", pb, "--yes")
    assert r.returncode == 3 and f"{pb}:" in r.stderr, r.stderr
    inv = _hostile_inventory(lab.inventory_path, *REFUSED_HOSTS[0][:2], tmp_path / "hosts.yaml")
    r = cli("-i", inv, "run", ROOT / "playbooks" / "baseline.yaml", "--yes")
    assert r.returncode == 3 and f"{inv}:" in r.stderr, r.stderr
    before.assert_no_contact()
    assert pwned(lab) == []
