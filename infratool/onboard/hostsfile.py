"""Edit ``hosts.yaml`` as text, so comments, order and style survive.

A new host is inserted after the last entry of ``hosts:`` (or under the
comments of an empty ``hosts:``); a removed host's lines — its key line, its
settings and comments indented deeper than its name — are deleted. Every
other byte stays as it was. The result is re-parsed and must equal the old
data plus (or minus) exactly that host before it is returned; a layout the
text edit cannot handle (a flow-style ``hosts: {...}``) goes through a
ruamel.yaml round trip instead, checked the same way.

Comments above a removed host are kept: whether they describe that host or
the section cannot be known, and losing an operator's note is worse than
leaving one to delete by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infratool import yamlsrc
from infratool.errors import InputError


def scalar(value: str) -> str:
    """``value`` as a YAML scalar: bare when it reads back as the same string, else double-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./~+-]+", value):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def entry_lines(fields: dict[str, Any], indent: int, step: int) -> list[str]:
    """A host's settings as block-mapping lines (lists in flow style, ``host_key`` quoted)."""
    pad = " " * (indent + step)
    lines = []
    for key, value in fields.items():
        if isinstance(value, list | tuple):
            text = "[" + ", ".join(scalar(str(v)) for v in value) + "]"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif key == "host_key":
            text = json.dumps(str(value))
        else:
            text = scalar(str(value))
        lines.append(f"{pad}{key}: {text}")
    return lines


@dataclass
class _HostsLayout:
    """Where things are in a hosts.yaml: from PyYAML's node marks (0-based lines)."""

    lines: list[str]
    key_line: int
    """The line of the top-level ``hosts:`` key."""
    node: Any
    """The value node of ``hosts`` (MappingNode, or a null ScalarNode)."""
    entries: list[tuple[str, int, int]] = field(default_factory=list)
    """(name, first line, last line) of every host entry, in order."""


def _last_line(node: Any) -> int:
    """0-based line of the last character of ``node``'s text."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style:
        children = (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if children:
            return max(_last_line(c) for c in children)
    end = node.end_mark
    return end.line if end.column > 0 else max(end.line - 1, node.start_mark.line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _layout(text: str) -> _HostsLayout:
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError("YAML syntax error", line=mark.line + 1 if mark else None) from None
    if not isinstance(root, yaml.MappingNode):
        raise InputError("inventory must be a mapping with 'hosts:'")
    found = next(
        ((k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "hosts"), None
    )
    if found is None:
        raise InputError("inventory has no 'hosts:' key")
    key, value = found
    lines = text.splitlines(keepends=True)
    layout = _HostsLayout(lines, key.start_mark.line, value)
    if isinstance(value, yaml.MappingNode):
        for hkey, hvalue in value.value:
            first = hkey.start_mark.line
            last = max(first, _last_line(hvalue))
            # A block scalar's end mark lies past the blank lines it swallowed.
            while last > first and not lines[last].strip():
                last -= 1
            # Comments indented deeper than the host's name, right after its
            # value, are part of that entry.
            col = hkey.start_mark.column
            nxt = last + 1
            while nxt < len(lines):
                stripped = lines[nxt].strip()
                if stripped.startswith("#") and _indent(lines[nxt]) > col:
                    last = nxt
                elif stripped:
                    break
                nxt += 1
            layout.entries.append((str(hkey.value), first, last))
    return layout


def _blank_above(lines: list[str], first: int, col: int) -> bool:
    """Whether a blank line precedes the entry starting at ``first`` (above its comment block)."""
    i = first - 1
    while i >= 0 and lines[i].strip().startswith("#") and _indent(lines[i]) == col:
        i -= 1
    return i >= 0 and not lines[i].strip()


def _child_step(layout: _HostsLayout, host_col: int) -> int:
    """Indentation step of host settings in this file (2 if no block-style host shows it)."""
    for _name, first, last in layout.entries:
        for i in range(first + 1, last + 1):
            line = layout.lines[i]
            if line.strip() and not line.strip().startswith("#"):
                return max(_indent(line) - host_col, 1)
    return 2


def _entry_text(name: str, fields: dict[str, Any], col: int, step: int) -> list[str]:
    return [f"{' ' * col}{scalar(name)}:\n"] + [ln + "\n" for ln in entry_lines(fields, col, step)]


def _text_add(text: str, name: str, fields: dict[str, Any]) -> str | None:
    """``text`` with host ``name`` appended to ``hosts:``; None if the layout needs ruamel."""
    layout = _layout(text)
    node, lines = layout.node, list(layout.lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if isinstance(node, yaml.MappingNode) and node.flow_style and node.value:
        return None
    if isinstance(node, yaml.MappingNode) and node.value:
        col = node.value[0][0].start_mark.column
        step = _child_step(layout, col)
        after = layout.entries[-1][2]
        # Keep the file's rhythm: a blank line between hosts if it has them.
        spaced = len(layout.entries) > 1 and _blank_above(lines, layout.entries[-1][1], col)
        new = (["\n"] if spaced else []) + _entry_text(name, fields, col, step)
        return "".join(lines[: after + 1] + new + lines[after + 1 :])
    # No hosts yet: `hosts:` (null), `hosts: ~`, `hosts: {}`.
    if node.start_mark.line != layout.key_line:
        return None
    head = lines[layout.key_line]
    start, end = node.start_mark.column, node.end_mark.column
    if node.end_mark.line != layout.key_line:
        return None
    lines[layout.key_line] = head[:start].rstrip() + head[end:] if end > start else head
    if not lines[layout.key_line].endswith("\n"):
        lines[layout.key_line] += "\n"
    key_col = _indent(head)
    after = layout.key_line
    # Comments indented under `hosts:` (like the scaffold's example) stay above the first host.
    i = after + 1
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("#") and _indent(lines[i]) > key_col:
            after = i
        elif stripped:
            break
        i += 1
    new = _entry_text(name, fields, key_col + 2, 2)
    return "".join(lines[: after + 1] + new + lines[after + 1 :])


def _text_remove(text: str, name: str) -> str | None:
    """``text`` without host ``name``'s lines; None if the layout needs ruamel."""
    layout = _layout(text)
    node = layout.node
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return None
    index = next((i for i, (entry, _, _) in enumerate(layout.entries) if entry == name), None)
    if index is None:
        return None
    _, first, last = layout.entries[index]
    lines = layout.lines
    before, after = lines[:first], lines[last + 1 :]
    # Drop the blank line that separated this host from its neighbours (the
    # one `add` wrote before it), so no double gap or dangling gap remains.
    last_of_several = index == len(layout.entries) - 1 and index > 0
    if before and not before[-1].strip() and (not after or not after[0].strip() or last_of_several):
        before = before[:-1]
    return "".join(before + after)


def _ruamel() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 1 << 30
    return y


def _ruamel_dump(doc: Any, text: str) -> str:
    import io

    from ruamel.yaml.util import load_yaml_guess_indent

    _, indent, block_seq_indent = load_yaml_guess_indent(text)
    y = _ruamel()
    y.indent(
        mapping=indent or 2, sequence=(indent or 2) + (block_seq_indent or 0), offset=block_seq_indent or 0
    )
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _ruamel_add(text: str, name: str, fields: dict[str, Any]) -> str:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    doc = _ruamel().load(text)
    if doc.get("hosts") is None:
        doc["hosts"] = CommentedMap()
    entry = CommentedMap()
    for key, value in fields.items():
        if isinstance(value, list | tuple):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            entry[key] = seq
        elif key == "host_key":
            entry[key] = DoubleQuotedScalarString(value)
        else:
            entry[key] = value
    hosts = doc["hosts"]
    if hosts.fa.flow_style():
        entry.fa.set_flow_style()
    hosts[name] = entry
    return _ruamel_dump(doc, text)


def _ruamel_remove(text: str, name: str) -> str:
    doc = _ruamel().load(text)
    del doc["hosts"][name]
    return _ruamel_dump(doc, text)


def _plain(data: Any) -> Any:
    """yamlsrc's located containers as plain dicts/lists, for comparison."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _checked(
    path: Path, old: str, new: str, name: str, fields: dict[str, Any] | None, keep_order: bool = True
) -> bool:
    """Whether ``new`` is ``old`` plus host ``name`` = ``fields`` (or minus it, for None)."""
    try:
        before = _plain(yamlsrc.loads(old, path))
        after = _plain(yamlsrc.loads(new, path))
    except InputError:
        return False
    if not isinstance(after, dict):
        return False
    expected = dict(before)
    hosts = dict(expected.get("hosts") or {})
    if fields is None:
        hosts.pop(name, None)
    else:
        hosts[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    expected["hosts"] = hosts or None
    got_hosts = after.get("hosts") or None
    if keep_order and got_hosts and list(got_hosts) != list(hosts):
        return False
    return {**after, "hosts": got_hosts} == expected


def add_host_text(text: str, path: Path, name: str, fields: dict[str, Any]) -> str:
    """hosts.yaml ``text`` with host ``name`` appended (every other byte kept; see module doc)."""
    new = _text_add(text, name, fields)
    if new is None or not _checked(path, text, new, name, fields):
        new = _ruamel_add(text, name, fields)
        if not _checked(path, text, new, name, fields):
            raise InputError(f"cannot add {name!r} to this inventory's layout; add it by hand", file=path)
    return new


def remove_host_text(text: str, path: Path, name: str) -> str:
    """hosts.yaml ``text`` without host ``name`` (every other line kept)."""
    new = _text_remove(text, name)
    if new is None or not _checked(path, text, new, name, None):
        new = _ruamel_remove(text, name)
        if not _checked(path, text, new, name, None):
            raise InputError(
                f"cannot remove {name!r} from this inventory's layout; edit it by hand", file=path
            )
    return new


def replace_host_text(text: str, path: Path, name: str, fields: dict[str, Any]) -> str:
    """hosts.yaml ``text`` with host ``name``'s entry rewritten in place as ``fields``."""
    layout = _layout(text)
    for entry, first, last in layout.entries:
        if entry == name and isinstance(layout.node, yaml.MappingNode) and not layout.node.flow_style:
            col = _indent(layout.lines[first])
            new_lines = _entry_text(name, fields, col, _child_step(layout, col))
            new = "".join(layout.lines[:first] + new_lines + layout.lines[last + 1 :])
            if _checked(path, text, new, name, fields):
                return new
    new = _ruamel_remove(text, name)
    new = add_host_text(new, path, name, fields)
    if not _checked(path, text, new, name, fields, keep_order=False):
        raise InputError(f"cannot rewrite {name!r} in this inventory's layout; edit it by hand", file=path)
    return new
