"""Rotation policy: the full schema parses; every mistake is an InputError at file:line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.rotation.policy import (
    Command,
    FileTarget,
    load_policy,
    parse_duration,
    parse_policy,
    render_template,
)
from infratool.secrets.secret import Secret

HOSTS = {"snix", "slax", "brix", "nixtv-player"}

GOOD = """\
notify:
  command: "ntfy-send infra"
  url: "https://ntfy.sh/fleet"
secrets:
  postgres/app:
    file: secrets/db.yaml
    generator: password
    params: {length: 40}
    max_age: 90d
    consumers:
      - host: brix
        file: {path: /var/lib/app/db-password, mode: "0640", owner: app}
        reload: systemctl reload app
      - host: brix
        command: "psql -v ON_ERROR_STOP=1 -f -"
        stdin_template: "ALTER ROLE app PASSWORD '{value}';"
        verify:
          run: "psql -h brix -U app -c 'select 1'"
          stdin: "{value}"
  builders/slax:
    file: secrets/builders.yaml
    generator: ssh-ed25519
    params: {comment: "slax->snix"}
    max_age: 1w3d
    consumers:
      - host: slax
        file: {path: /root/.ssh/nix-builder}
      - host: snix
        part: public
        command: "tee -a /etc/ssh/authorized_keys.d/nix-builder"
  api/token:
    file: secrets/api.yaml
    generator: hex
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hosts.yaml").write_text("hosts: {}\n")  # marks the repo root
    (tmp_path / "secrets").mkdir(exist_ok=True)
    path = tmp_path / "secrets" / "rotation.yaml"
    path.write_text(text)
    return path


def test_full_policy_parses(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD), HOSTS)
    assert policy.root == tmp_path.resolve()
    assert policy.notify is not None and policy.notify.events == ("failure", "due", "drift")
    assert list(policy.secrets) == ["postgres/app", "builders/slax", "api/token"]
    pg = policy.secrets["postgres/app"]
    assert pg.key == "postgres/app"
    assert pg.file == tmp_path.resolve() / "secrets/db.yaml"
    assert pg.params == {"length": 40, "alphabet": "alnum"}  # defaults filled in
    assert pg.max_age == timedelta(days=90)
    assert pg.line == 5
    file_consumer, sql_consumer = pg.consumers
    assert file_consumer.file == FileTarget("/var/lib/app/db-password", 0o640, "app", "app")
    assert file_consumer.reload == ("systemctl reload app",)
    assert file_consumer.line == 11
    assert sql_consumer.command == Command(
        "psql -v ON_ERROR_STOP=1 -f -", "ALTER ROLE app PASSWORD '{value}';"
    )
    assert sql_consumer.verify == Command("psql -h brix -U app -c 'select 1'", "{value}")
    slax = policy.secrets["builders/slax"]
    assert slax.max_age == timedelta(days=10) and slax.has_public
    assert slax.consumers[0].file == FileTarget("/root/.ssh/nix-builder", 0o600, "root", "root")
    assert slax.consumers[1].part == "public" and slax.consumers[1].command is not None
    assert slax.consumers[1].command.stdin == "{public}"  # default stdin follows the part
    token = policy.secrets["api/token"]
    assert token.max_age is None and token.consumers == ()
    assert policy.files() == [tmp_path.resolve() / f"secrets/{n}.yaml" for n in ("db", "builders", "api")]


def test_playbook_params_form(tmp_path: Path) -> None:
    data = yamlsrc.loads(GOOD, "playbooks/rotate.yaml")
    policy = parse_policy(data, "playbooks/rotate.yaml", HOSTS, root=tmp_path)
    assert policy.secrets["api/token"].file == tmp_path / "secrets/api.yaml"


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (replace("generator: password", "generator: passwd"), 7, "unknown generator 'passwd' (did you mean 'password'?)"),
        (replace("max_age: 90d", "max_age: 90 days"), 9, "malformed duration '90 days'"),
        (replace("max_age: 90d", "max_age: 90"), 9, "needs a unit"),
        (replace("max_age: 90d", "max_age: 0d"), 9, "longer than zero"),
        (replace("- host: brix\n        file:", "- host: brixx\n        file:"), 11, "unknown host 'brixx' (did you mean 'brix'?)"),
        (replace("- host: slax\n", "- part: value\n"), 26, "consumer 1 needs 'host'"),
        (replace("        reload: systemctl reload app\n", "        reload: [1]\n"), 13, "reload must be"),
        (replace("{path: /var/lib/app/db-password, mode: \"0640\", owner: app}", "{mode: \"0640\"}"), 12, "file needs 'path'"),
        (replace("{path: /var/lib/app/db-password, mode: \"0640\", owner: app}", "{path: rel/path}"), 12, "must be absolute"),
        (replace('mode: "0640"', "mode: 0640"), 12, 'quoted octal string like "0600"'),
        (replace('mode: "0640"', 'mode: "0999"'), 12, "quoted octal"),
        (replace("params: {length: 40}", "params: {length: 2}"), 8, "length must be between 8 and 4096"),
        (replace("params: {length: 40}", "params: {lenght: 40}"), 8, "no parameter 'lenght'"),
        (replace("    generator: hex\n", "    generator: nix-cache-key\n"), 33, "needs parameter 'name'"),
        (replace("file: secrets/api.yaml", "file: secrets/api.json"), 32, "sops YAML file"),
        (replace("    generator: hex\n", ""), 31, "needs 'generator'"),
        (replace("  api/token:\n", "  api//token:\n"), 31, "secret name 'api//token'"),
        # Issue 13.6: names colliding with internal keys, shell in owner/group, files outside the repo.
        (replace("  api/token:\n", "  _rotation/pending/postgres/app:\n"), 31, "is reserved"),
        (replace("  api/token:\n", "  _rotation:\n"), 31, "is reserved"),
        (replace("  api/token:\n", "  sops/mac:\n"), 31, "is reserved"),
        (replace("owner: app}", "owner: \"$(touch /tmp/pwned)\"}"), 12, "not a user/group name"),
        (replace("owner: app}", "owner: app, group: \"a;b\"}"), 12, "file.group 'a;b' is not a user/group name"),
        (replace("file: secrets/api.yaml", "file: ../outside.yaml"), 32, "outside the repo"),
        (replace("file: secrets/api.yaml", "file: /etc/outside.yaml"), 32, "outside the repo"),
        (replace("max_age: 1w3d", "max_ag: 1w3d"), 24, "unknown key 'max_ag' in secret 'builders/slax' (did you mean 'max_age'?)"),
        (replace("stdin: \"{value}\"", "stdin: \"{valeu}\""), 19, "unknown placeholder {valeu}"),
        (replace("        part: public\n", "        part: publik\n"), 29, "part must be 'value' or 'public'"),
        (replace("      - host: brix\n        command:", "      - host: brix\n        reload: x\n        noop:"), 16, "unknown key 'noop'"),
        (replace("  url: \"https://ntfy.sh/fleet\"", "  url: \"ftp://x\""), 3, "url must be http"),
        (replace("notify:\n  command: \"ntfy-send infra\"\n  url: \"https://ntfy.sh/fleet\"\n", "notify: {events: [due]}\n"), 1, "command and/or a url"),
        (replace("  url: \"https://ntfy.sh/fleet\"", "  on: [due]"), 3, "use 'events:'"),
        (replace("  url: \"https://ntfy.sh/fleet\"", "  events: [sometimes]"), 3, "events must list"),
        ("secrets:\n  a/b:\n    file: s.yaml\n    generator: hex\n  a/b/c:\n    file: s.yaml\n    generator: hex\n", 5, "cannot live beneath"),
        ("secret:\n  a: {}\n", 1, "unknown key 'secret' in the policy (did you mean 'secrets'?)"),
        ("- 1\n", 1, "must be a mapping"),
        ("secrets:\n  a: {file: x.yaml, generator: hex\n", 3, "YAML syntax error"),
        ("secrets:\n  a: {file: x.yaml, generator: hex}\n  a: {file: y.yaml, generator: hex}\n", 3, "duplicate key 'a'"),
    ],
)  # fmt: skip
def test_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_policy(path, HOSTS)
    assert message in exc.value.message, exc.value.message
    assert (exc.value.file, exc.value.line) == (str(path), line), str(exc.value)
    assert str(exc.value).startswith(f"{path}:{line}: ")


def test_consumer_without_delivery_is_refused(tmp_path: Path) -> None:
    text = "secrets:\n  a:\n    file: s.yaml\n    generator: hex\n    consumers:\n      - host: brix\n        reload: x\n"
    with pytest.raises(InputError, match="needs 'file' and/or 'command'") as exc:
        load_policy(write(tmp_path, text), HOSTS)
    assert exc.value.line == 6


def test_public_part_needs_a_key_pair_generator(tmp_path: Path) -> None:
    text = (
        "secrets:\n  a:\n    file: s.yaml\n    generator: password\n    consumers:\n"
        "      - host: brix\n        part: public\n        command: cat\n"
    )
    with pytest.raises(InputError, match="needs a key-pair generator") as exc:
        load_policy(write(tmp_path, text), HOSTS)
    assert exc.value.line == 7


def test_host_check_can_be_skipped(tmp_path: Path) -> None:
    text = "secrets:\n  a:\n    file: s.yaml\n    generator: hex\n    consumers:\n      - {host: anywhere, command: cat}\n"
    assert load_policy(write(tmp_path, text), None).secrets["a"].consumers[0].host == "anywhere"


def test_parse_duration() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("1w3d") == timedelta(days=10)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("45s") == timedelta(seconds=45)
    for bad in ("", "d", "90", "90x", "-1d", "1.5d", "90d ago", "1 d"):
        with pytest.raises(InputError):
            parse_duration(bad)


def test_templates_render_in_one_pass_into_a_secret() -> None:
    value = Secret("pw-with-{public}-inside")
    out = render_template(
        "ALTER ROLE app PASSWORD '{value}'; -- {public} {other} {\"json\": 1}", value, "PUB"
    )
    assert str(out) == "***"
    assert out.reveal() == "ALTER ROLE app PASSWORD 'pw-with-{public}-inside'; -- PUB {other} {\"json\": 1}"
    assert Command("cat").render_stdin(value).reveal() == value.reveal()
    with pytest.raises(InputError, match="no public part"):
        render_template("{public}", value, None)


def test_a_policy_file_symlinked_out_of_the_repo_is_refused(tmp_path: Path) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / "secrets").mkdir(parents=True)
    elsewhere.mkdir()
    (repo / "secrets" / "linked").symlink_to(elsewhere)
    text = "secrets:\n  a/b:\n    file: secrets/linked/x.yaml\n    generator: hex\n"
    with pytest.raises(InputError) as exc:
        parse_policy(yamlsrc.loads(text, "p.yaml"), "p.yaml", HOSTS, root=repo)
    assert exc.value.line == 3 and "outside the repo" in exc.value.message


def test_account_names_people_use_still_pass(tmp_path: Path) -> None:
    text = GOOD.replace("owner: app}", 'owner: "nginx-cache", group: "1001"}', 1)
    policy = load_policy(write(tmp_path, text), HOSTS)
    target = policy.secrets["postgres/app"].consumers[0].file
    assert target is not None and (target.owner, target.group) == ("nginx-cache", "1001")
