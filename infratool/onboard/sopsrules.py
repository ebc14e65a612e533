"""``secrets/.sops.yaml``: enrol hosts as age recipients, and re-encrypt what changed.

Who reads what (the creation rules ``host add`` maintains; sops takes the
first rule whose ``path_regex`` matches the path relative to ``.sops.yaml``):

* ``<host>.yaml``, ``<host>/…``, ``*/<host>.yaml`` → the operators and that
  one host (:func:`host_regex`), so a host reads only its own secrets;
* ``common.yaml``, ``common/…`` → the operators and every host
  (:data:`COMMON_REGEX`);
* anything else (the rule ``infratool init`` writes) → the operators only:
  infratool delivers those values itself, over SSH.

"Operators" are the recipients of the last rule that is neither a host rule
nor the common rule: the operator key, and the backup identity once
``secrets recover init`` added it there.

Edits go through ruamel.yaml in round-trip mode, so the file's comments and
other rules stay; new rules carry comments naming whose recipient is whose.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infratool import yamlsrc
from infratool.context import write_atomic
from infratool.errors import InfratoolError, InputError, SecretsError

SOPS_CONFIG_NAME = ".sops.yaml"
COMMON = "common"
COMMON_REGEX = r"(^|/)common(\.ya?ml$|/)"
"""Creation-rule regex of the files every host reads (``common.yaml``, ``common/``)."""
_HOST_REGEX = re.compile(r"^\(\^\|/\)([A-Za-z0-9][A-Za-z0-9_-]*)\(\\\.ya\?ml\$\|/\)$")


def host_regex(name: str) -> str:
    """Creation-rule regex of the files only host ``name`` (and the operators) read."""
    return rf"(^|/){name}(\.ya?ml$|/)"


@dataclass(frozen=True)
class Rule:
    """One sops creation rule, as far as age is concerned."""

    path_regex: str | None
    recipients: tuple[str, ...]

    @property
    def host(self) -> str | None:
        """The host this rule is for, if it is one of ``host add``'s per-host rules."""
        m = _HOST_REGEX.match(self.path_regex or "")
        return m.group(1) if m and m.group(1) != COMMON else None

    @property
    def is_common(self) -> bool:
        """Whether this is the every-host rule (``secrets/common.yaml``)."""
        return self.path_regex == COMMON_REGEX

    def matches(self, rel: str) -> bool:
        """Whether sops would pick this rule for ``rel`` (a path relative to ``.sops.yaml``'s dir).

        Go's ``regexp.MatchString`` searches, like Python's ``re.search``; the
        rules infratool writes use only syntax both agree on.
        """
        return self.path_regex is None or re.search(self.path_regex, rel) is not None


def _ruamel() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 1 << 30  # never fold a recipient list
    return y


def _split_recipients(value: Any) -> list[str]:
    if isinstance(value, str):
        return [r.strip() for r in value.split(",") if r.strip()]
    if isinstance(value, list):
        return [str(r).strip() for r in value if str(r).strip()]
    return []


def parse_rules(text: str, path: Path) -> list[Rule]:
    """The creation rules of a ``.sops.yaml``; :class:`InputError` with file:line if malformed."""
    data = yamlsrc.loads(text, path)
    rules = data.get("creation_rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        raise InputError("no 'creation_rules:' list", file=path, line=1)
    result = []
    for i, rule in enumerate(rules):
        rule = yamlsrc.mapping(rule, "a creation rule must be a mapping", path, yamlsrc.line_of(rules, i))
        recipients = _split_recipients(rule.get("age"))
        for group in rule.get("key_groups") or []:
            if isinstance(group, dict):
                recipients += _split_recipients(group.get("age"))
        regex = rule.get("path_regex")
        result.append(Rule(str(regex) if regex is not None else None, tuple(dict.fromkeys(recipients))))
    return result


def operator_recipients(rules: Sequence[Rule]) -> list[str]:
    """The recipients of the last rule that is neither a host rule nor the common rule."""
    for rule in reversed(rules):
        if rule.host is None and not rule.is_common:
            if not rule.recipients:
                break
            return list(rule.recipients)
    raise InputError(
        "no operator rule with age recipients in .sops.yaml (expected one like "
        "`infratool init` writes: path_regex: .*\\.ya?ml$ with the operator's age key)"
    )


_LABEL_COLUMN = 72  # "      - " + a 62-character recipient + 2: labels line up


def _age_seq(recipients: Sequence[str], labels: dict[str, str]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(list(recipients))
    for i, r in enumerate(recipients):
        if r in labels:
            seq.yaml_add_eol_comment(labels[r], i, column=_LABEL_COLUMN)
    return seq


def _set_age(rule: Any, recipients: Sequence[str], labels: dict[str, str]) -> None:
    """Set a rule's ``age`` to ``recipients``, keeping its style (list, or comma string).

    A list is edited in place, so the labels (comments) of entries that stay
    are kept.
    """
    from ruamel.yaml.comments import CommentedSeq

    current = rule.get("age")
    if isinstance(current, CommentedSeq):
        for i in reversed(range(len(current))):
            if str(current[i]).strip() not in recipients:
                del current[i]
        present = [str(r).strip() for r in current]
        for r in recipients:
            if r not in present:
                current.append(r)
                if r in labels:
                    current.yaml_add_eol_comment(labels[r], len(current) - 1, column=_LABEL_COLUMN)
    elif isinstance(current, str):
        joined = ",".join(recipients)
        rule["age"] = type(current)(joined) if type(current) is not str else joined
    else:
        rule["age"] = _age_seq(recipients, labels)


def edit_sops_config(
    text: str, path: Path, host: str, recipient: str | None, old_recipients: Sequence[str] = ()
) -> str:
    """``.sops.yaml`` text with host ``host`` enrolled as ``recipient`` (or removed, for None).

    Enrolling upserts the host's rule (operators + the host) before every
    other rule and adds the host to the common rule (created if missing).
    ``old_recipients`` (a re-pinned host's previous recipient) and, on
    removal, the host's recipients are taken out of every rule.
    """
    from ruamel.yaml.comments import CommentedMap

    rules = parse_rules(text, path)
    operators = operator_recipients(rules)
    y = _ruamel()
    y.indent(mapping=2, sequence=4, offset=2)
    doc = y.load(text)
    seq = doc["creation_rules"]
    gone = set(old_recipients)
    own = [i for i, r in enumerate(rules) if r.host == host]
    if recipient is None:
        for i in own:
            gone |= set(rules[i].recipients) - set(operators)
    gone.discard(recipient or "")
    # A host recipient listed by hand in the operator rule goes too: it is the host's.
    operators = [o for o in operators if o not in gone]
    if not operators:
        raise InputError("removing this host would leave the operator rule of .sops.yaml with no recipient")
    # Out of every rule first (a removed or re-keyed host reads nothing more).
    for i, rule in enumerate(rules):
        if gone & set(rule.recipients) and rule.host != host:
            _set_age(seq[i], [r for r in rule.recipients if r not in gone], {})
    for i in reversed(own):
        del seq[i]
    if recipient is not None:
        rules = parse_rules(_dump(y, doc), path)
        labels = {r: "operator" for r in operators} | {recipient: f"{host} (ssh-to-age of its host key)"}
        rule = CommentedMap()
        rule["path_regex"] = host_regex(host)
        rule["age"] = _age_seq(list(dict.fromkeys([*operators, recipient])), labels)
        rule.yaml_add_eol_comment(f"host {host}: secrets/{host}.yaml, secrets/{host}/", "path_regex")
        position = max((i + 1 for i, r in enumerate(rules) if r.host is not None), default=0)
        seq.insert(position, rule)
        rules = parse_rules(_dump(y, doc), path)
        common = [i for i, r in enumerate(rules) if r.is_common]
        if common:
            i = common[0]
            if recipient not in rules[i].recipients:
                _set_age(seq[i], [*rules[i].recipients, recipient], {recipient: host})
        else:
            hosts = [(r.host, x) for r in rules if r.host for x in r.recipients if x not in operators]
            labels = {r: "operator" for r in operators} | {x: h for h, x in hosts}
            rule = CommentedMap()
            rule["path_regex"] = COMMON_REGEX
            rule["age"] = _age_seq([*operators, *dict.fromkeys(x for _, x in hosts)], labels)
            rule.yaml_add_eol_comment("every host: secrets/common.yaml, secrets/common/", "path_regex")
            seq.insert(position + 1, rule)
    return _dump(y, doc)


def _dump(y: Any, doc: Any) -> str:
    import io

    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


# --- re-encryption ----------------------------------------------------------------------


def sops_files(secrets_dir: Path) -> list[Path]:
    """Every sops-encrypted YAML file under ``secrets_dir`` (files without sops metadata skipped)."""
    found = []
    for path in sorted(secrets_dir.rglob("*")):
        if path.name == SOPS_CONFIG_NAME or path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            doc = yaml.load(path.read_bytes(), Loader=yamlsrc.NoAliasLoader)  # no alias bombs
        except (yaml.YAMLError, OSError):
            continue
        meta = doc.get("sops") if isinstance(doc, dict) else None
        if isinstance(meta, dict) and "mac" in meta:
            found.append(path)
    return found


def stale_files(store: Any, rules: Sequence[Rule]) -> list[tuple[Path, tuple[str, ...]]]:
    """(file, wanted recipients) of every sops file whose recipients differ from its rule's."""
    stale = []
    for path in sops_files(store.repo):
        rel = path.relative_to(store.repo).as_posix()
        rule = next((r for r in rules if r.matches(rel)), None)
        if rule is None or not rule.recipients:
            continue  # no age rule: sops itself would refuse; not ours to fix
        if set(store.recipients(path)) != set(rule.recipients):
            stale.append((path, rule.recipients))
    return stale


def apply_sops_config(store: Any, new_text: str) -> list[Path]:
    """Write ``.sops.yaml`` and re-encrypt every file whose recipients changed; return those files.

    All or nothing: if any ``sops updatekeys`` fails (e.g. no operator
    identity), the old ``.sops.yaml`` is put back and the files already
    re-encrypted are re-encrypted back, then the error is raised.
    """
    config: Path = store.config
    old_text = config.read_text()
    rules = parse_rules(new_text, config)
    if new_text != old_text:
        write_atomic(config, new_text.encode(), config.stat().st_mode & 0o7777)
    done: list[Path] = []
    try:
        for path, wanted in stale_files(store, rules):
            store.updatekeys(path)
            done.append(path)
            got = set(store.recipients(path))
            if got != set(wanted):
                raise SecretsError(f"sops updatekeys left {store.display(path)} with other recipients")
    except BaseException:
        if new_text != old_text:
            write_atomic(config, old_text.encode(), config.stat().st_mode & 0o7777)
            for path in done:
                # Best effort: the first error is the one to report.
                with contextlib.suppress(InfratoolError):
                    store.updatekeys(path)
        raise
    return done
