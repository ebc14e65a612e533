"""The decrypted sops document as a YAML tree: key paths, leaves as text, edits.

A secret's key ``a/b/c`` is a path in the document; sops-nix writes each
leaf to a file as text. These helpers turn the tree (ruamel, so comments
and order survive a write) into ``{"a/b/c": Secret}`` and edit it. They never
run sops: :class:`infratool.secrets.store.SopsStore` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from infratool.errors import SecretsError
from infratool.secrets.secret import Secret

# Characters that would break sops's ["a"]["b"] index syntax or make a key
# impossible to address from sops-nix.
_BAD_KEY_CHARS = re.compile(r'["\\\x00-\x1f]')


def split_key(key: str) -> list[str]:
    """``a/b/c`` -> ``["a", "b", "c"]``; :class:`SecretsError` for an unusable key."""
    parts = key.split("/")
    if not key or any(not p for p in parts) or _BAD_KEY_CHARS.search(key):
        raise SecretsError(f"invalid secret key {key!r}: use a/b/c with no empty parts or quotes")
    return parts


def sops_index(key: str) -> str:
    """The sops tree index for ``a/b/c``: ``["a"]["b"]["c"]``."""
    return "".join(f"[{json.dumps(p)}]" for p in split_key(key))


def _yaml() -> Any:
    # Imported lazily: ruamel costs start-up time that `infratool --help` must not pay.
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.width = 1 << 30  # never fold long values (keys, certificates)
    return y


def _leaf_text(value: Any) -> str:
    """A YAML leaf as the string sops-nix would write to the secret file."""
    from ruamel.yaml.comments import TaggedScalar

    if isinstance(value, TaggedScalar):  # '=' and '<<' come back tagged from ruamel
        return str(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(_plain(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return _leaf_text(value)


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, path + "/")
        else:
            yield path, _leaf_text(value)


def _find_key(node: Mapping[Any, Any], part: str) -> Any:
    """The existing key of ``node`` spelled ``part`` (YAML keys may be ints or bools)."""
    if part in node:
        return part
    for key in node:
        if str(key) == part:
            return key
    return None


def _reveal_text(value: Secret | str) -> str:
    raw = value.reveal() if isinstance(value, Secret) else value
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise SecretsError("secret values must be text (encode binary values first)") from None
    return raw


def _secrets(tree: Mapping[Any, Any]) -> dict[str, Secret]:
    # Wrapping registers each value with the redactor the moment it is read.
    return {key: Secret(text) for key, text in _flatten(tree)}


def _assign(tree: Any, parts: list[str], text: str, shown: str) -> bool:
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    # Always double-quoted: YAML escapes every character there (NUL, NEL, U+2028...),
    # and a quoted scalar is a string to every YAML reader ("1e3", "yes", "=").
    value = DoubleQuotedScalarString(text)
    node = tree
    for i, part in enumerate(parts[:-1]):
        key = _find_key(node, part)
        if key is None:
            from ruamel.yaml.comments import CommentedMap

            node[part] = CommentedMap()
            key = part
        elif not isinstance(node[key], Mapping):
            where = "/".join(parts[: i + 1])
            raise SecretsError(f"{shown}: cannot set {'/'.join(parts)}: {where} is a value, not a mapping")
        node = node[key]
    key = _find_key(node, parts[-1])
    if key is not None:
        current = node[key]
        if isinstance(current, Mapping):
            raise SecretsError(f"{shown}: cannot set {'/'.join(parts)}: it is a mapping of secrets")
        if isinstance(current, str) and not _is_tagged(current) and str(current) == text:
            return False
        node[key] = value
    else:
        node[parts[-1]] = value
    return True


def _is_tagged(value: Any) -> bool:
    from ruamel.yaml.comments import TaggedScalar

    return isinstance(value, TaggedScalar)


def _delete(tree: Any, parts: list[str]) -> bool:
    trail = []
    node = tree
    for part in parts[:-1]:
        key = _find_key(node, part)
        if key is None or not isinstance(node[key], Mapping):
            return False
        trail.append((node, key))
        node = node[key]
    key = _find_key(node, parts[-1])
    if key is None:
        return False
    del node[key]
    # Drop parents the deletion left empty, so a/b/c leaves no empty "a: {b: {}}".
    while trail and not node:
        parent, pkey = trail.pop()
        del parent[pkey]
        node = parent
    return True
