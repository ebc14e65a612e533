"""Fuzzed inventories, playbooks, rotation policies and sops files never crash the parsers.

Every malformed input must end in an :class:`InputError` naming the file (and
the line, whenever the YAML itself parsed) — which the CLI turns into exit 3 —
and never in any other exception, a socket or a child process (see
:mod:`fuzzkit`). The seeds are the real files: the fleet's ``hosts.yaml``
shape, every playbook in ``playbooks/``, the lab's rotation policy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import HOSTILE, dump, malformed, only_input_errors, text_mutation, values, write
from helpers import ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from infratool_lab.services import policy_text

from infratool import inventory, playbook, yamlsrc
from infratool.errors import InputError, SecretsFileError
from infratool.rotation import policy
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, load_all

PLAYBOOKS = ROOT / "playbooks"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INVENTORY = """\
defaults:
  user: root
  port: 22
  ssh_key: id_ed25519
  known_hosts: known_hosts
  flake: .
hosts:
  snix: {address: 10.0.0.1, os: nixos, system: x86_64-linux, tags: [workstation, builder, cache]}
  slax: {address: 10.0.0.2, tags: [laptop], host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 c"}
  brix:
    address: 10.0.0.3
    port: 2222
    tags: [server]
    deploy_command: "nixos-rebuild switch --flake {flake}#{host} --target-host {user}@{address}"
  nixtv-player: {address: 10.0.0.4, tags: [media], os: linux}
"""
KNOWN_HOSTS = "10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1\n[10.0.0.3]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3\n"
LAB_POLICY = policy_text("brix", "10.0.0.3", "slax", "10.0.0.2", 8081)
# The same policy with tokend on a NixOS slax (sops-nix's /run/secrets and restartUnits).
LAB_POLICY_NIXOS = policy_text("brix", "10.0.0.3", "slax", "10.0.0.2", 8081, tok_nixos=True)


class Repo:
    """The fuzz repo: a root directory and its loaded inventory (short repr: hypothesis prints it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = inventory.load(root / "hosts.yaml")

    def __repr__(self) -> str:
        return f"<fuzz repo {self.root}>"


@pytest.fixture(scope="module")
def fuzz_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A fleet repo: inventory, known_hosts, the real playbooks (includes resolve), secrets/."""
    root = tmp_path_factory.mktemp("fuzz-repo")
    (root / "hosts.yaml").write_text(INVENTORY)
    (root / "known_hosts").write_text(KNOWN_HOSTS)
    shutil.copytree(PLAYBOOKS, root / "playbooks")
    (root / "secrets").mkdir()
    (root / "secrets" / "rotation.yaml").write_text(LAB_POLICY)
    return Repo(root)


def test_seeds_are_valid(fuzz_repo: Repo) -> None:
    """The mutations start from inputs that load, so what breaks is the mutation."""
    assert len(fuzz_repo.inventory) == 4
    for pb in sorted((fuzz_repo.root / "playbooks").glob("*.yaml")):
        assert playbook.load(pb, fuzz_repo.inventory).invocations
    assert policy.load_policy(fuzz_repo.root / "secrets" / "rotation.yaml", fuzz_repo.inventory.names).secrets
    nixos = write(fuzz_repo.root / "secrets" / "nixos-rotation.yaml", LAB_POLICY_NIXOS)
    assert policy.load_policy(nixos, fuzz_repo.inventory.names).secrets


# --- YAML itself -------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(max_size=200), text_mutation(INVENTORY), text_mutation(LAB_POLICY)))
def test_yaml_loader_raises_only_located_input_errors(text: str) -> None:
    try:
        yamlsrc.loads(text, "fuzz.yaml")
    except InputError as exc:
        assert exc.file == "fuzz.yaml"
        if "nested too deeply" not in exc.message:
            assert exc.line is not None and exc.line >= 1, exc


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nwhen: 2001-02-30\n", 2),  # PyYAML raised ValueError for impossible dates
        ("a: !!int nope\n", 1),
        ("a:\n  b: !!bool maybe\n", 2),
        ("a: !!timestamp x\n", 1),
        ("a: !!map [1]\n", 1),
        ("port: 0x_\n", 1),
        ("a: 1\nb: \x00\n", 2),  # the reader's error had no line
        ("big: " + "1" * 5000 + "\n", 1),  # beyond Python's int-from-text limit
    ],
)
def test_yaml_corner_cases_have_a_line(text: str, line: int) -> None:
    with pytest.raises(InputError) as err:
        yamlsrc.loads(text, "f.yaml")
    assert (err.value.file, err.value.line) == ("f.yaml", line)
    assert len(str(err.value)) < 200  # a 5000-digit value is not echoed back whole


# --- inventory -----------------------------------------------------------------------------


@FUZZ
@given(malformed(INVENTORY))
def test_inventory_never_crashes(fuzz_repo: Repo, text: str) -> None:
    path = write(fuzz_repo.root / "fuzz-hosts.yaml", text)
    only_input_errors(lambda: inventory.load(path), text)


@FUZZ
@given(values(sorted(inventory.HOST_KEYS | inventory.DEFAULT_KEYS | {"defaults", "hosts"})).map(dump))
def test_inventory_of_any_shape_never_crashes(fuzz_repo: Repo, text: str) -> None:
    path = write(fuzz_repo.root / "fuzz-shape.yaml", text)
    only_input_errors(lambda: inventory.load(path), text)


@FUZZ
@given(st.one_of(st.sampled_from(HOSTILE), text_mutation(KNOWN_HOSTS)))
def test_known_hosts_file_never_crashes(fuzz_repo: Repo, text: str) -> None:
    sub = fuzz_repo.root / "kh"
    sub.mkdir(exist_ok=True)
    write(sub / "known_hosts", text)
    inv = write(sub / "hosts.yaml", INVENTORY)
    only_input_errors(lambda: inventory.load(inv), INVENTORY)


@pytest.mark.parametrize(
    ("known_hosts", "problem"),
    [(".", "Is a directory"), ("/", "Is a directory"), ("missing/", None), ("/dev/null", None)],
)
def test_known_hosts_that_is_no_file(fuzz_repo: Repo, known_hosts: str, problem: str | None) -> None:
    # IsADirectoryError escaped as a traceback once.
    sub = fuzz_repo.root / "kh2"
    sub.mkdir(exist_ok=True)
    text = INVENTORY.replace("known_hosts: known_hosts", f"known_hosts: {known_hosts!r}")
    err = only_input_errors(lambda: inventory.load(write(sub / "hosts.yaml", text)), text)
    if problem is None:
        assert err is None
    else:
        assert err is not None and problem in err.message and err.line == 5


# --- playbooks -----------------------------------------------------------------------------


def _playbook_seeds() -> list[str]:
    return [p.read_text() for p in sorted(PLAYBOOKS.glob("*.yaml"))]


@FUZZ
@given(st.sampled_from(_playbook_seeds()).flatmap(malformed))
def test_playbook_never_crashes(fuzz_repo: Repo, text: str) -> None:
    # In playbooks/ beside the real ones, so an `include:` of them still resolves.
    path = write(fuzz_repo.root / "playbooks" / "fuzz.yaml", text)
    only_input_errors(lambda: playbook.load(path, fuzz_repo.inventory), text)


# Imported once here: importing task modules inside a strategy touches `random`.
REGISTRY = load_all()
HOST_NAMES = ["snix", "slax", "brix", "nixtv-player", "nope"]
_TYPED: dict[type, st.SearchStrategy[Any]] = {
    str: st.one_of(st.sampled_from(HOSTILE), st.sampled_from(HOST_NAMES), st.text(max_size=20)),
    int: st.integers(-5, 70000),
    float: st.floats(allow_nan=True),
    bool: st.booleans(),
    list: st.lists(st.one_of(st.sampled_from(HOST_NAMES), st.sampled_from(HOSTILE), values([])), max_size=4),
    dict: st.dictionaries(
        st.one_of(st.sampled_from(HOST_NAMES), st.sampled_from(HOSTILE)), values([]), max_size=3
    ),
}


def _param_value(spec: Param) -> st.SearchStrategy[Any]:
    """Mostly a value of the parameter's own type (so validation goes past the type check)."""
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    typed = [_TYPED[t] for t in types if t in _TYPED]
    if spec.choices:
        typed.append(st.sampled_from(spec.choices))
    return st.one_of(*typed, *typed, values(HOST_NAMES)) if typed else values(HOST_NAMES)


@st.composite
def task_entry(draw: st.DrawFn) -> str:
    """A playbook with one real task, its required parameters and some optional ones, mostly well typed."""
    import yaml

    cls = REGISTRY[draw(st.sampled_from(sorted(REGISTRY)))]
    args: dict[Any, Any] = {}
    for key, spec in cls.params.items():
        if spec.required or draw(st.integers(0, 2)) == 0:
            args[key] = draw(_param_value(spec))
    if draw(st.integers(0, 9)) == 0:
        args[draw(st.sampled_from(HOSTILE))] = draw(values([]))
    entry: dict[str, Any] = {"task": cls.name, "with": args}
    if draw(st.integers(0, 4)) == 0:
        entry["hosts"] = draw(st.one_of(st.sampled_from(["all", "snix", "tag:server", "!brix"]), values([])))
    return yaml.safe_dump({"tasks": [entry]}, allow_unicode=True)


@settings(FUZZ, max_examples=100)
@given(task_entry())
# An inline policy's `notify: {}` once raised an error with no line (the task's mapping is rebuilt).
@example("tasks:\n- task: secrets_rotation.rotate\n  with:\n    notify: {}\n    secrets: {}\n")
def test_task_parameters_never_crash(fuzz_repo: Repo, text: str) -> None:
    path = write(fuzz_repo.root / "playbooks" / "fuzz-task.yaml", text)
    only_input_errors(lambda: playbook.load(path, fuzz_repo.inventory), text)


# --- rotation policies ---------------------------------------------------------------------


@FUZZ
@given(st.one_of(malformed(LAB_POLICY), malformed(LAB_POLICY_NIXOS)))
def test_policy_file_never_crashes(fuzz_repo: Repo, text: str) -> None:
    path = write(fuzz_repo.root / "secrets" / "fuzz-rotation.yaml", text)
    only_input_errors(lambda: policy.load_policy(path, fuzz_repo.inventory.names), text)


_POLICY_KEYS = [
    "notify",
    "secrets",
    "command",
    "url",
    "events",
    "file",
    "generator",
    "params",
    "max_age",
    "consumers",
    "host",
    "part",
    "path",
    "mode",
    "owner",
    "group",
    "stdin_template",
    "reload",
    "verify",
    "run",
    "stdin",
    "length",
    "alphabet",
    "bytes",
    "urlsafe",
    "comment",
    "name",
    "password",
    "hex",
    "base64",
    "ssh-ed25519",
    "age",
    "nix-cache-key",
    "value",
    "public",
]


@FUZZ
@given(values(_POLICY_KEYS).map(dump))
def test_policy_of_any_shape_never_crashes(fuzz_repo: Repo, text: str) -> None:
    path = fuzz_repo.root / "secrets" / "p.yaml"
    only_input_errors(
        lambda: policy.parse_policy(yamlsrc.loads(text, path), path, {"brix", "slax"}, fuzz_repo.root), text
    )


@FUZZ
@given(st.sampled_from(list(policy.generators.GENERATORS)), values(_POLICY_KEYS))
def test_generator_params_never_crash(fuzz_repo: Repo, generator: str, params: Any) -> None:
    text = dump({"secrets": {"a/b": {"file": "secrets/x.yaml", "generator": generator, "params": params}}})
    path = fuzz_repo.root / "secrets" / "p.yaml"
    only_input_errors(
        lambda: policy.parse_policy(yamlsrc.loads(text, path), path, None, fuzz_repo.root), text
    )


# --- sops files (metadata read without sops) ----------------------------------------------

SOPS_FILE = """\
db:
    password: ENC[AES256_GCM,data:3jO9yUk=,iv:nN4kT5rq0cQ=,tag:Zx1Lw==,type:str]
sops:
    kms: []
    age:
        - recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
          enc: |
            -----BEGIN AGE ENCRYPTED FILE-----
            YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBh
            -----END AGE ENCRYPTED FILE-----
    key_groups:
        - age:
            - recipient: age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj
    lastmodified: "2024-01-01T00:00:00Z"
    mac: ENC[AES256_GCM,data:abc=,iv:def=,tag:ghi=,type:str]
    version: 3.8.1
"""


@FUZZ
@given(malformed(SOPS_FILE))
@example("sops: {age: 5}\n")  # each of these raised TypeError/ValueError once
@example("sops: {key_groups: 5}\n")
@example("sops: {key_groups: [{age: 3}]}\n")
@example("when: 2001-02-30\nsops: {}\n")
@example("a: !!bool maybe\nsops: {}\n")
def test_sops_metadata_never_crashes(fuzz_repo: Repo, text: str) -> None:
    path = write(fuzz_repo.root / "secrets" / "fuzz-sops.yaml", text)
    store = SopsStore(fuzz_repo.root / "secrets", sops="/bin/false")
    # "no sops metadata" is about the whole file: there is no line to point at.
    err = only_input_errors(lambda: store.recipients(path), text, no_line_ok=("no sops metadata",))
    assert err is None or isinstance(err, SecretsFileError)


# --- sops files through the real sops binary ------------------------------------------------


@pytest.fixture(scope="module")
def sops_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[SopsStore, str]:
    """A secrets repo with an operator key and one encrypted file; the store and that file's text."""
    import os

    from infratool.onboard.scaffold import ensure_operator_repo
    from infratool.secrets.secret import Secret

    root = tmp_path_factory.mktemp("sops-repo")
    ensure_operator_repo(root, root / "age.key")
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(root / "age.key"), "HOME": str(root)}
    store = SopsStore(root / "secrets", env=env)
    store.write("db.yaml", {"db/password": Secret("hunter2"), "api/token": Secret("x" * 40)})
    return store, (root / "secrets" / "db.yaml").read_text()


def _sops_regressions(text: str) -> list[str]:
    """Mutations that were 'sops failed (exit 1)' before: bad lastmodified, bad version, a sops panic."""
    import re

    return [
        text[: text.index("lastmodified")],  # truncated
        re.sub(r'lastmodified: "[^"]+"', 'lastmodified: "yesterday"', text),
        re.sub(r"version: \S+", "version: 0 x", text),
        re.sub(r"(api:\n\s+token: )[^\n]+", r"\g<1>.nan", text),  # sops panics on a bare number
    ]


def test_sops_file_regressions_are_input_errors(sops_repo: tuple[SopsStore, str]) -> None:
    store, good = sops_repo
    for text in _sops_regressions(good):
        write(store.repo / "m.yaml", text)
        store.invalidate()
        with pytest.raises(SecretsFileError) as err:
            store.read("m.yaml")
        assert err.value.file == "m.yaml", err.value


@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_sops_file_through_sops_never_crashes(sops_repo: tuple[SopsStore, str], data: st.DataObject) -> None:
    store, good = sops_repo
    text = data.draw(text_mutation(good))
    write(store.repo / "m.yaml", text)
    store.invalidate()
    try:
        store.read("m.yaml")
    except SecretsFileError as exc:  # exit 3: the file is the problem
        assert exc.file == "m.yaml"
        assert "Traceback" not in exc.message
