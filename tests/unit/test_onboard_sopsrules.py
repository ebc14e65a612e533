""".sops.yaml enrolment: who reads what, agreed with the real sops binary; all-or-nothing re-encryption."""

from __future__ import annotations

from pathlib import Path

import pyrage
import pytest
import yaml

from infratool.errors import InputError, SecretsFileError
from infratool.onboard.scaffold import SOPS_CONFIG
from infratool.onboard.sopsrules import (
    COMMON_REGEX,
    apply_sops_config,
    edit_sops_config,
    host_regex,
    operator_recipients,
    parse_rules,
    sops_files,
    stale_files,
)
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

CONFIG = Path(".sops.yaml")


def recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


OPERATOR, SNIX, SLAX, SNIX2 = recipient(), recipient(), recipient(), recipient()


def enrolled(*hosts: tuple[str, str]) -> str:
    text = SOPS_CONFIG.format(recipients=OPERATOR)
    for name, r in hosts:
        text = edit_sops_config(text, CONFIG, name, r)
    return text


def first_rule(text: str, rel: str):
    return next(r for r in parse_rules(text, CONFIG) if r.matches(rel))


def test_who_reads_what():
    text = enrolled(("snix", SNIX), ("slax", SLAX), ("snix2", SNIX2))
    table = {
        "snix.yaml": {OPERATOR, SNIX},
        "snix.yml": {OPERATOR, SNIX},
        "snix/cache.yaml": {OPERATOR, SNIX},
        "secureboot/snix.yaml": {OPERATOR, SNIX},
        "snix2.yaml": {OPERATOR, SNIX2},  # a name that starts like another host's
        "slax.yaml": {OPERATOR, SLAX},
        "common.yaml": {OPERATOR, SNIX, SLAX, SNIX2},
        "common/wifi.yaml": {OPERATOR, SNIX, SLAX, SNIX2},
        "nix-cache.yaml": {OPERATOR},
        "snixx.yaml": {OPERATOR},
        "operators.yaml": {OPERATOR},
    }
    for rel, readers in table.items():
        assert set(first_rule(text, rel).recipients) == readers, rel
    rules = parse_rules(text, CONFIG)
    assert [r.host for r in rules] == ["snix", "slax", "snix2", None, None]
    assert rules[3].path_regex == COMMON_REGEX and rules[3].is_common
    assert operator_recipients(rules) == [OPERATOR]


def test_comments_name_every_recipient_and_the_header_stays():
    text = enrolled(("snix", SNIX), ("slax", SLAX))
    assert text.startswith(SOPS_CONFIG.splitlines()[0])
    assert f"{SNIX}  # snix (ssh-to-age of its host key)" in text
    assert f"{OPERATOR}  # operator" in text
    assert f"{SLAX}  # slax\n" in text  # in the common rule


def test_remove_takes_the_host_out_of_every_rule():
    text = enrolled(("snix", SNIX), ("slax", SLAX))
    # An operator who had listed snix in the catch-all by hand: removal covers it too.
    text = text.replace(f"age: >-\n      {OPERATOR}", f"age: >-\n      {OPERATOR},{SNIX}")
    removed = edit_sops_config(text, CONFIG, "snix", None, [SNIX])
    assert SNIX not in removed
    assert [r.host for r in parse_rules(removed, CONFIG)] == ["slax", None, None]
    assert set(first_rule(removed, "common.yaml").recipients) == {OPERATOR, SLAX}
    # The comment labels of what stays are kept.
    assert f"{SLAX}  # slax\n" in removed


def test_repin_replaces_the_recipient_and_is_idempotent():
    new = recipient()
    text = enrolled(("snix", SNIX), ("slax", SLAX))
    repinned = edit_sops_config(text, CONFIG, "snix", new, [SNIX])
    assert SNIX not in repinned
    assert set(first_rule(repinned, "snix.yaml").recipients) == {OPERATOR, new}
    assert set(first_rule(repinned, "common.yaml").recipients) == {OPERATOR, new, SLAX}
    assert edit_sops_config(repinned, CONFIG, "snix", new, [SNIX]) == repinned


def test_host_regex_shape():
    assert host_regex("nixtv-player") == r"(^|/)nixtv-player(\.ya?ml$|/)"


def test_bad_configs_are_bad_input():
    with pytest.raises(InputError, match="creation_rules"):
        parse_rules("rules: []\n", CONFIG)
    with pytest.raises(InputError, match=r"\.sops\.yaml:3"):
        parse_rules("creation_rules:\n  - path_regex: a\n  - just a string\n", CONFIG)
    only_hosts = f"creation_rules:\n  - path_regex: {host_regex('a')}\n    age: {OPERATOR}\n"
    with pytest.raises(InputError, match="no operator rule"):
        edit_sops_config(only_hosts, CONFIG, "b", SNIX)


# --- against the real sops binary -----------------------------------------------------------


@pytest.fixture
def secrets(tmp_path, monkeypatch) -> SopsStore:
    """secrets/ with the scaffold's .sops.yaml, an operator key in SOPS_AGE_KEY_FILE, an empty HOME."""
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "operator.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "secrets"
    root.mkdir()
    (root / ".sops.yaml").write_text(SOPS_CONFIG.format(recipients=identity.to_public()))
    return SopsStore(root)


def test_sops_picks_the_rule_we_predict(secrets):
    config = secrets.config
    text = config.read_text()
    for name, r in (("snix", SNIX), ("slax", SLAX)):
        text = edit_sops_config(text, config, name, r)
    config.write_text(text)
    for rel in (
        "snix.yaml",
        "snix/a.yaml",
        "hosts/snix.yaml",
        "common.yaml",
        "common/b.yaml",
        "other.yaml",
        "snix2.yaml",
        "deep/dir/slax.yml",
    ):
        secrets.path(rel).parent.mkdir(parents=True, exist_ok=True)
        secrets.write(rel, {"k": Secret("v")})
        assert set(secrets.recipients(rel)) == set(first_rule(text, rel).recipients), rel


def test_apply_reencrypts_exactly_the_stale_files(secrets):
    for rel in ("snix.yaml", "common.yaml", "other.yaml"):
        secrets.write(rel, {"k": Secret(rel)})
    (secrets.repo / "policy.yaml").write_text("not: encrypted\n")  # plain YAML is left alone
    new = edit_sops_config(secrets.config.read_text(), secrets.config, "snix", SNIX)
    done = apply_sops_config(secrets, new)
    assert sorted(p.name for p in done) == ["common.yaml", "snix.yaml"]
    assert SNIX in secrets.recipients("snix.yaml") and SNIX not in secrets.recipients("other.yaml")
    assert stale_files(secrets, parse_rules(new, secrets.config)) == []
    secrets.invalidate()
    assert secrets.read("snix.yaml")["k"].reveal() == "snix.yaml"  # the operator still decrypts
    assert apply_sops_config(secrets, new) == []  # converged: nothing to do


def test_apply_is_all_or_nothing(secrets, tmp_path, monkeypatch):
    for rel in ("common.yaml", "snix.yaml"):
        secrets.write(rel, {"k": Secret("v")})
    old_config = secrets.config.read_text()
    before = {p: p.read_bytes() for p in sops_files(secrets.repo)}
    # The operator key is gone: sops cannot re-encrypt anything.
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "missing.txt"))
    new = edit_sops_config(old_config, secrets.config, "snix", SNIX)
    with pytest.raises(SecretsFileError, match="cannot decrypt"):
        apply_sops_config(SopsStore(secrets.repo), new)
    assert secrets.config.read_text() == old_config
    assert {p: p.read_bytes() for p in sops_files(secrets.repo)} == before


def test_updatekeys_failure_midway_is_undone(secrets, monkeypatch):
    for rel in ("common.yaml", "snix.yaml"):
        secrets.write(rel, {"k": Secret("v")})
    old_config = secrets.config.read_text()
    before = {p.name: secrets.recipients(p) for p in sops_files(secrets.repo)}
    real = SopsStore.updatekeys
    calls: list[str] = []

    def flaky(self, file):
        calls.append(Path(file).name)
        if len(calls) == 2:
            raise SecretsFileError("simulated failure", file=str(file))
        return real(self, file)

    monkeypatch.setattr(SopsStore, "updatekeys", flaky)
    with pytest.raises(SecretsFileError, match="simulated"):
        apply_sops_config(secrets, edit_sops_config(old_config, secrets.config, "snix", SNIX))
    assert secrets.config.read_text() == old_config
    assert {p.name: secrets.recipients(p) for p in sops_files(secrets.repo)} == before
    assert calls[:2] == ["common.yaml", "snix.yaml"] and calls[2] == "common.yaml"  # put back


def test_rules_file_round_trips_through_yaml():
    text = enrolled(("snix", SNIX))
    data = yaml.safe_load(text)
    assert data["creation_rules"][0] == {"path_regex": host_regex("snix"), "age": [OPERATOR, SNIX]}
