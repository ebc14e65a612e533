"""YAML loading that remembers where every value came from.

Inventory, playbooks and rotation policies must report bad input as
``file:line``. PyYAML's plain loaders throw positions away, so this loader
builds ordinary dicts/lists/scalars and records the line of each mapping,
sequence and mapping key in a side table, queried with :func:`line_of`.

Values stay plain Python types, so the rest of the code never sees a wrapper.

Aliases (``*name``) are refused, whatever the file: nine nested aliases make
a 437-byte "billion laughs" document that expands to gigabytes as soon as
anything walks it (validation, ``str()``, JSON), and no file infratool reads
needs them. The composer stops at the first alias, so a bomb costs nothing
but the parse of its first lines.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from infratool.errors import InputError
from infratool.suggest import did_you_mean


class _Located(dict):
    """A dict that knows its own line and the line of each key."""

    __slots__ = ("key_lines", "line")


class _LocatedList(list):
    """A list that knows its own line and the line of each item."""

    __slots__ = ("item_lines", "line")


ALIAS_MESSAGE = "YAML aliases (*name) are not accepted: write the value out"


class NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses aliases (``*name``) and merge keys built from them."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose the next node; an alias is a located error (see the module docstring)."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, ALIAS_MESSAGE, event.start_mark)
        return super().compose_node(parent, index)


class _Loader(NoAliasLoader):
    """SafeLoader that returns :class:`_Located` mappings and sequences."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct ``node``; a value its constructor cannot read becomes a located YAML error.

        PyYAML's SafeConstructor lets plain Python errors escape for some
        malformed scalars (``2001-02-30``, ``0x_``, ``!!int x``, ``!!bool x``,
        ``!!map [1]``); they would surface as tracebacks without a line.
        """
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError):
            value = str(node.value) if isinstance(node, yaml.ScalarNode) else node.id
            shown = value if len(value) <= 40 else value[:37] + "..."
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown!r} as {tag}", node.start_mark
            ) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Located:
    loader.flatten_mapping(node)
    result = _Located()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise InputError("mapping keys must be plain scalars", line=key_node.start_mark.line + 1)
        if key in result:
            raise InputError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _LocatedList:
    result = _LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _problem(exc: yaml.MarkedYAMLError) -> str:
    if exc.problem == ALIAS_MESSAGE:
        return ALIAS_MESSAGE
    return f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"


def load(path: str | Path) -> Any:
    """Parse the YAML file at ``path``; syntax errors become :class:`InputError` with file:line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file: {exc}", file=path) from None
    return loads(text, path)


def loads(text: str, path: str | Path = "<string>") -> Any:
    """Parse YAML ``text`` (reported as ``path`` in errors)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except InputError as exc:
        raise InputError(exc.message, file=path, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise InputError(_problem(exc), file=path, line=line) from None
    except yaml.reader.ReaderError as exc:
        # An unacceptable character: the reader knows its offset, not its line.
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise InputError(f"YAML error: unacceptable character #x{code:04x}", file=path, line=line) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", file=path) from None
    except RecursionError:
        raise InputError("YAML nested too deeply", file=path) from None


def load_plain(text: str | bytes, path: str | Path = "<string>") -> Any:
    """Parse YAML into plain dicts/lists (no line table), refusing aliases like :func:`loads`.

    For files read only for a few fields (sops metadata, ``.sops.yaml``):
    errors are :class:`InputError` with ``file:line``.
    """
    try:
        return yaml.load(text, Loader=NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InputError(_problem(exc), file=path, line=mark.line + 1 if mark else None) from None
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise InputError(f"YAML error: {exc}", file=path) from None
    except RecursionError:
        raise InputError("YAML nested too deeply", file=path) from None


def has_alias(text: str | bytes) -> bool:
    """Whether the YAML ``text`` uses an alias (events only: nothing is built or expanded).

    For documents another parser (ruamel) then loads; a text that is not
    YAML at all is left for that parser to report.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader))
    except yaml.YAMLError:
        return False


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of ``container[key]`` (a mapping key or list index), or of the container."""
    if key is not None:
        if isinstance(container, _Located):
            return container.key_lines.get(key, container.line)
        if isinstance(container, _LocatedList) and isinstance(key, int):
            if 0 <= key < len(container.item_lines):
                return container.item_lines[key]
            return container.line
    return getattr(container, "line", None)


# -- validation: the checks every file infratool reads shares ----------------


def mapping(value: Any, message: str, path: str | Path, line: int | None) -> dict[Any, Any]:
    """``value`` if it is a mapping; else an :class:`InputError` ``message`` at ``path:line``."""
    if not isinstance(value, dict):
        raise InputError(message, file=path, line=line)
    return value


def first_unknown(data: dict[Any, Any], allowed: Collection[str]) -> Any | None:
    """The first key of ``data`` (in file order) that is not in ``allowed``, or None."""
    return next((key for key in data if key not in allowed), None)


def unknown_key_message(key: Any, allowed: Collection[str], where: str = "") -> str:
    """``unknown key 'x' in WHERE (did you mean 'y'?) (expected one of a, b)``: one wording everywhere."""
    where = f" {where}" if where else ""
    return (
        f"unknown key {key!r}{where}{did_you_mean(str(key), allowed)}"
        f" (expected one of {', '.join(sorted(allowed))})"
    )


def check_keys(
    data: dict[Any, Any], allowed: Collection[str], path: str | Path, where: str = "", line: int | None = None
) -> None:
    """Refuse the first key of ``data`` not in ``allowed``, at its own line (else ``line``)."""
    key = first_unknown(data, allowed)
    if key is not None:
        raise InputError(unknown_key_message(key, allowed, where), file=path, line=line_of(data, key) or line)
