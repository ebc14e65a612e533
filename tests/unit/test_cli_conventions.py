"""Command-line conventions (issue 17): exit codes, global flags anywhere, JSON documents,
--limit spellings and did-you-mean. The real program runs in a subprocess; nothing
here needs a host, so every case is bad input or local.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT

from infratool import inventory, taskdoc
from infratool.errors import InputError

INVENTORY = """\
hosts:
  snix: {address: 192.0.2.1, tags: [workstation, builder, cache]}
  slax: {address: 192.0.2.2, tags: [laptop, builder]}
  brix: {address: 192.0.2.3, tags: [server, cache]}
  nixtv-player: {address: 192.0.2.4, tags: [media]}
"""


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    # Not ./hosts.yaml of the cli's cwd (tmp_path): that is the default inventory.
    path = tmp_path / "fleet" / "inventory.yaml"
    path.parent.mkdir()
    path.write_text(INVENTORY)
    return path


def test_no_arguments_prints_help_and_exits_0(cli):
    proc = cli()
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "Commands:" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],  # unknown option of the program
        ["nosuchcommand"],  # unknown command
        ["hosts", "--bogus"],  # unknown option of a command
        ["secrets", "rotate", "--bogus"],  # ... of a sub-subcommand
        ["plan"],  # missing argument
    ],
)
def test_usage_errors_exit_3_not_2(cli, args):
    # 2 means "changes pending" (plan --detailed-exitcode): a typo must not read as that.
    proc = cli(*args)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "Error" in proc.stderr


def test_global_flags_anywhere_on_the_line(cli, inv):
    before = cli("-i", inv, "--json", "hosts")
    after = cli("hosts", "--json", "-i", inv)
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    # In a nested group too, and with the command's own options around them.
    nested = cli("tasks", "command", "--json")
    assert json.loads(nested.stdout)["name"] == "command"
    # Without -i the default ./hosts.yaml (absent in the test's cwd) is used: the
    # late -i really took effect.
    assert cli("hosts").returncode == 3
    assert cli("hosts", "--limit", "@media", "--inventory", inv).returncode == 0


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["hosts"], "hosts"),
        (["tasks"], "tasks"),
    ],
)
def test_json_documents_are_versioned_objects(cli, inv, args, key):
    proc = cli("-i", inv, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1
    assert doc["command"] == args[0]
    assert isinstance(doc[key], list) and doc[key]


def test_errors_come_as_json_with_json(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts:\n  snix: {address: 192.0.2.1, tagz: [x]}\n")
    proc = cli("hosts", "-i", bad, "--json")
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1 and doc["command"] == "hosts"
    err = doc["error"]
    assert err["kind"] == "InputError" and err["exit_code"] == 3
    assert err["file"] == str(bad) and err["line"] == 2
    assert "did you mean 'tags'?" in err["message"]
    # A usage error too, wherever --json stands.
    usage = cli("plan", "--json", "--bogus")
    assert usage.returncode == 3
    assert json.loads(usage.stdout)["error"]["exit_code"] == 3


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("@builder", ["snix", "slax"]),
        ("tag:builder,&tag:cache", ["snix"]),
        ("tag:builder:&tag:cache", ["snix"]),  # Ansible's spelling
        ("@builder,&@cache", ["snix"]),
        ("@cache,!brix", ["snix"]),
        ("tag:cache:!brix", ["snix"]),
        ("&@cache", ["snix", "brix"]),  # only an intersection: of everything
        ("all,!@builder", ["brix", "nixtv-player"]),
    ],
)
def test_limit_spellings(tmp_path, limit, expected):
    path = tmp_path / "hosts.yaml"
    path.write_text(INVENTORY)
    assert [h.name for h in inventory.load(path).select(limit)] == expected


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("snx", "did you mean 'snix'?"),
        ("@buildr", "did you mean '@builder'?"),
        ("tag:lapto", "did you mean 'tag:laptop'?"),
        ("!slx", "did you mean 'slax'?"),
        ("@builder,&@medai", "did you mean '@media'?"),
        ("@nothing-like-it", "tags: builder, cache, laptop, media, server, workstation"),
        ("@laptop,&@server", "selects no host"),  # empty intersection: warn, exit 3
    ],
)
def test_limit_mistakes_are_bad_input_with_a_hint(tmp_path, limit, message):
    path = tmp_path / "hosts.yaml"
    path.write_text(INVENTORY)
    with pytest.raises(InputError) as err:
        inventory.load(path).select(limit)
    assert message in str(err.value)


def test_empty_selection_exits_3_before_connecting(cli, inv, tmp_path):
    book = tmp_path / "book.yaml"
    book.write_text("hosts: tag:laptop\ntasks:\n  - task: command\n    with: {command: 'true'}\n")
    proc = cli("-i", inv, "plan", book, "--limit", "@server")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "select no host" in proc.stderr
    assert "Plan:" not in proc.stdout
    empty = cli("-i", inv, "plan", book, "--limit", "@laptop,&@server")
    assert empty.returncode == 3 and "selects no host" in empty.stderr


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  - task: comand\n    with: {command: 'true'}\n",
            "unknown task 'comand' (did you mean 'command'?)",
        ),
        (
            "  - task: command\n    with: {comand: 'true'}\n",
            "unknown parameter 'comand' (did you mean 'command'?)",
        ),
        (
            "  - task: command\n    wiht: {command: 'true'}\n",
            "unknown key 'wiht' in task entry (did you mean 'with'?)",
        ),
    ],
)
def test_playbook_mistakes_suggest_a_correction(cli, inv, tmp_path, entry, message):
    book = tmp_path / "book.yaml"
    book.write_text("tasks:\n" + entry)
    proc = cli("-i", inv, "plan", book)
    assert proc.returncode == 3
    assert message in proc.stderr
    assert f"{book}:2:" in proc.stderr or f"{book}:3:" in proc.stderr


def test_inventory_key_typo_suggests_a_correction(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text("defaults:\n  usr: root\nhosts:\n  a: {address: 192.0.2.1}\n")
    with pytest.raises(InputError, match=r"did you mean 'user'\?") as err:
        inventory.load(path)
    assert err.value.line == 2


def test_tasks_lists_and_describes(cli):
    listing = cli("tasks")
    assert listing.returncode == 0
    for name in ("files.content", "command", "secrets_rotation.rotate", "secureboot.enroll"):
        assert name in listing.stdout
    one = cli("tasks", "files.content")
    assert one.returncode == 0
    assert "path" in one.stdout and "required" in one.stdout and "Example:" in one.stdout
    assert "- task: files.content" in one.stdout
    wrong = cli("tasks", "file.content")
    assert wrong.returncode == 3 and "did you mean 'files.content'?" in wrong.stderr


def test_tasks_reference_page_is_generated_from_the_tasks():
    page = (ROOT / "docs" / "tasks.md").read_text()
    assert page == taskdoc.markdown(), (
        "docs/tasks.md is stale: run `infratool tasks --markdown > docs/tasks.md`"
    )


def test_every_task_example_is_a_valid_playbook_entry(inv, tmp_path):
    """The generated examples parse and validate as playbook entries (placeholders and all)."""
    from infratool import playbook

    loaded = inventory.load(inv)
    for doc in taskdoc.all_tasks():
        book = tmp_path / f"{doc.name}.yaml"
        body = "\n".join(f"  {line}" for line in doc.example.splitlines())
        book.write_text(f"tasks:\n{body}\n")
        try:
            playbook.load(book, loaded)
        except InputError as exc:
            # Placeholders may fail a task's own value checks, never the schema.
            assert "unknown" not in exc.message and "missing required" not in exc.message, (doc.name, exc)


TAGGED = """\
tasks:
  - task: command
    name: build step
    tags: [build]
    with: {command: 'true'}
  - task: command
    name: deploy step
    tags: [deploy, slow]
    hosts: '@laptop'
    with: {command: 'true'}
  - task: command
    name: untagged step
    with: {command: 'true'}
"""


@pytest.fixture
def tagged(tmp_path: Path) -> Path:
    book = tmp_path / "tagged.yaml"
    book.write_text(TAGGED)
    return book


def _labels(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [t["label"] for t in json.loads(proc.stdout)["tasks"]]


def test_list_tasks_and_hosts_touch_nothing(cli, inv, tagged):
    # The inventory's addresses are TEST-NET: any connection attempt would fail.
    everything = _labels(cli("-i", inv, "plan", tagged, "--list-tasks", "--json"))
    assert everything == ["build step", "deploy step", "untagged step"]
    hosts = cli("-i", inv, "run", tagged, "--list-hosts", "--limit", "@builder")
    assert hosts.returncode == 0, hosts.stderr
    assert hosts.stdout.split() == ["playbook:", str(tagged), "(2", "host(s))", "snix", "slax"]
    table = cli("-i", inv, "plan", tagged, "--list-tasks")
    assert "deploy step" in table.stdout and "slax" in table.stdout


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tags", "build"], ["build step"]),
        (["--tags", "build,slow"], ["build step", "deploy step"]),
        (["--skip-tags", "slow"], ["build step", "untagged step"]),
        (["--tags", "deploy", "--skip-tags", "slow"], None),  # nothing left: exit 3
    ],
)
def test_tags_and_skip_tags(cli, inv, tagged, flags, expected):
    proc = cli("-i", inv, "plan", tagged, "--list-tasks", "--json", *flags)
    if expected is None:
        assert proc.returncode == 3 and "leave no task" in proc.stderr
    else:
        assert _labels(proc) == expected


def test_unknown_tag_suggests_one(cli, inv, tagged):
    proc = cli("-i", inv, "plan", tagged, "--tags", "buidl")
    assert proc.returncode == 3
    assert "--tags 'buidl': no task has this tag (did you mean 'build'?)" in proc.stderr


def test_site_playbook_parts_by_tag(cli):
    proc = cli(
        "-i",
        ROOT / "hosts.yaml",
        "plan",
        ROOT / "playbooks" / "site.yaml",
        "--tags",
        "cache",
        "--list-tasks",
        "--json",
    )
    assert {t["task"].split(".")[0] for t in json.loads(proc.stdout)["tasks"]} == {"binary_cache"}


def _all_commands():
    import click

    from infratool.cli import main

    def walk(cmd, path):
        yield path, cmd
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd, info_name=path[-1])
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name])

    return list(walk(main, ["infratool"]))


def test_every_command_has_help_with_examples():
    import click

    missing = [
        " ".join(path)
        for path, cmd in _all_commands()
        if "Examples:" not in cmd.get_help(click.Context(cmd, info_name=path[-1]))
    ]
    assert not missing, missing


def test_completion_of_limit_offers_hosts_and_tags(inv, tmp_path):
    import os
    import subprocess
    import sys

    def complete(*words: str) -> list[str]:
        env = {
            **os.environ,
            "_INFRATOOL_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["infratool", "-i", str(inv), *words]),
            "COMP_CWORD": str(len(words) + 2),
        }
        out = subprocess.run(
            [str(Path(sys.executable).parent / "infratool")],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        ).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("plan", "x.yaml", "--limit", "s") == ["snix", "slax"]
    assert complete("hosts", "--limit", "snix,@b") == ["snix,@builder"]
    assert complete("exec", "--limit", "@cache,!b") == ["@cache,!brix"]
    assert complete("run", "x.yaml", "--limit", "tag:me") == ["tag:media"]


def test_enroll_without_confirmation_names_the_phrase_not_yes(cli, inv):
    # Piped stdin used to get "pass --yes", which would not have been enough.
    proc = cli(
        "-i", inv, "secureboot", "enroll", "snix", "slax", "--confirm", "enroll-secure-boot-keys-on-snix"
    )
    assert proc.returncode == 3
    assert "--confirm enroll-secure-boot-keys-on-slax" in proc.stderr
    assert "enroll-secure-boot-keys-on-snix" not in proc.stderr.replace(
        "--confirm enroll-secure-boot-keys-on-slax", ""
    )
    assert "--yes" not in proc.stderr


def test_every_json_command_is_documented():
    """docs/json.md has a row for each command that prints a JSON document."""
    import re

    page = (ROOT / "docs" / "json.md").read_text()
    documented = {
        c for row in re.findall(r"^\| (`[^|]+`) \|", page, re.M) for c in re.findall(r"`([^`]+)`", row)
    }
    emitting = {
        "hosts",
        "facts",
        "plan",
        "run",
        "exec",
        "tasks",
        "tasks NAME",
        "secrets status",
        "secureboot status",
    }
    emitting |= {
        "init",
        "host add",
        "host remove",
        "lab up",
        "lab status",
        "secrets rotate",
        "secureboot enroll",
    }
    assert emitting <= documented, emitting - documented


VARS_BOOK = """\
vars:
  target: /var/lib/app/greeting
  who: world
tasks:
  - task: files.content
    with:
      path: "{{ target }}"
      content: "hello {{ who }}\\n"
"""


def _vars_labels(cli, inv, book, *flags):
    proc = cli("-i", inv, "plan", book, "--list-tasks", "--json", *flags)
    return proc, (json.loads(proc.stdout)["tasks"] if proc.returncode == 0 else None)


def test_vars_and_extra_vars_fill_task_parameters(cli, inv, tmp_path):
    book = tmp_path / "vars.yaml"
    book.write_text(VARS_BOOK)
    _, tasks = _vars_labels(cli, inv, book)
    assert tasks[0]["label"] == "files.content /var/lib/app/greeting"
    _, tasks = _vars_labels(cli, inv, book, "-e", "target=/etc/motd")  # -e wins over vars:
    assert tasks[0]["label"] == "files.content /etc/motd"
    extra = tmp_path / "extra.yaml"
    extra.write_text("target: /etc/issue\n")
    _, tasks = _vars_labels(cli, inv, book, "--extra-vars", f"@{extra}")
    assert tasks[0]["label"] == "files.content /etc/issue"
    # A typo in a variable name: bad input at the entry's line, with a hint.
    book.write_text(VARS_BOOK.replace("{{ who }}", "{{ woh }}"))
    proc, _ = _vars_labels(cli, inv, book)
    assert proc.returncode == 3
    assert f"{book}:6:" in proc.stderr and "unknown variable 'woh' (did you mean 'who'?)" in proc.stderr
    bad = cli("-i", inv, "plan", book, "-e", "not a pair")
    assert bad.returncode == 3 and "expected KEY=VALUE or @FILE.yaml" in bad.stderr


def test_a_whole_placeholder_keeps_the_value_type():
    from infratool.template import parse_extra_vars, render

    variables = parse_extra_vars(["clients=[slax, brix]", "n=3", "flag=true", "text=a b"])
    assert variables == {"clients": ["slax", "brix"], "n": 3, "flag": True, "text": "a b"}
    rendered = render(
        {"c": "{{ clients }}", "n": "{{n}}", "s": "n={{ n }}", "l": ["{{ text }}"]}, variables, InputError
    )
    assert rendered == {"c": ["slax", "brix"], "n": 3, "s": "n=3", "l": ["a b"]}


def test_every_commands_examples_run_that_command():
    """Each command's examples show the command itself (not only its group's or a sibling's).

    Example lines are parsed as a shell would and checked against the CLI:
    the words after ``infratool`` (global options skipped) must name this
    command's path, so an example copied from another command fails.
    """
    import shlex

    import click

    from infratool.cli import main

    wrong = []
    for path, cmd in _all_commands():
        text = cmd.get_help(click.Context(cmd, info_name=path[-1]))
        block = text.split("Examples:", 1)[-1]
        lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("infratool")]
        own = False
        for line in lines:
            words = [w for w in shlex.split(line.split(" #")[0]) if w != "infratool"]
            ctx = click.Context(main, info_name="infratool")
            names, group = [], main
            for word in words:
                if not isinstance(group, click.Group):
                    break
                sub = group.get_command(ctx, word)
                if sub is None:
                    continue  # a global option or its value
                names.append(word)
                group = sub
            if names[: len(path) - 1] == path[1:]:  # a group's examples show its subcommands
                own = True
        if not own:
            wrong.append(" ".join(path))
    assert not wrong, f"commands whose examples do not show them: {wrong}"
