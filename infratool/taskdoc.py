"""Task reference from the task classes themselves: ``infratool tasks`` and docs/tasks.md.

One source (each task's ``summary``, docstring and ``params``) feeds both the
command line and the reference page, and a test checks the page is what this
module generates, so they cannot drift apart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from infratool.tasks.base import Param, Task, load_all

DOC_HEADER = """\
# Task reference

Every task a playbook can use, with its parameters. Generated from the task
classes by `infratool tasks --markdown > docs/tasks.md` (a test checks it is
up to date); `infratool tasks NAME` shows the same on the command line.

A playbook is a mapping: `name`, `description`, `hosts` (a `--limit`
selection, default `all`), `vars` and `tasks`. Each entry of `tasks` is
either `include: other.yaml` or `task: NAME` with its parameters under
`with:`; either may have `hosts:` (narrowing the selection), `tags:` (for
`--tags`/`--skip-tags`) and `name:` (the label shown).

```yaml
vars:
  greeting_file: /var/lib/app/greeting
  who: world
tasks:
  - task: files.content
    name: greeting
    tags: [app]
    hosts: "@server"
    with:
      path: "{{ greeting_file }}"     # a whole "{{ name }}" keeps the value's type
      content: "hello {{ who }}\\n"  # inside text, the value as text
```

`-e KEY=VALUE` (VALUE read as YAML) or `-e @vars.yaml` on `plan`/`run`
overrides `vars:`. An unknown variable is bad input at its entry's line.
Variables are not secrets: secrets live in sops.
"""


@dataclass(frozen=True)
class ParamDoc:
    """One parameter, ready to show."""

    name: str
    type: str
    required: bool
    default: Any
    help: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "help": self.help,
        }


@dataclass(frozen=True)
class TaskDoc:
    """One task, ready to show."""

    name: str
    summary: str
    description: str
    params: list[ParamDoc]
    example: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "name": self.name,
            "summary": self.summary,
            "description": self.description,
            "params": [p.to_dict() for p in self.params],
            "example": self.example,
        }


def _type_name(t: type | tuple[type, ...] | None) -> str:
    if t is None:
        return "any"
    if isinstance(t, tuple):
        return " | ".join(_type_name(x) for x in t)
    return {type(None): "null"}.get(t, t.__name__)


def _param_type(p: Param) -> str:
    name = _type_name(p.type)
    if p.items is not None:
        name = f"list[{_type_name(p.items)}]" if name == "list" else f"{name} of {_type_name(p.items)}"
    if p.choices:
        name += f" (one of: {', '.join(map(str, p.choices))})"
    return name


def _default(p: Param) -> Any:
    if p.required:
        return None
    if callable(p.default):
        return "(computed)"
    return p.default


def _placeholder(name: str, p: Param) -> str:
    if p.choices:
        return str(p.choices[0])
    if p.type is int or (isinstance(p.type, tuple) and int in p.type and str not in p.type):
        return "1"
    if p.type is bool:
        return "true"
    if p.type is list:
        return f"[<{name}>]"
    if p.type is dict:
        return "{}"
    return f"<{name}>"


def _example(cls: type[Task]) -> str:
    explicit = getattr(cls, "example", "")
    if explicit:
        return inspect.cleandoc(explicit)
    lines = [f"- task: {cls.name}"]
    required = [(n, p) for n, p in cls.params.items() if p.required]
    if required:
        lines.append("  with:")
        lines += [f"    {n}: {_placeholder(n, p)}" for n, p in required]
    return "\n".join(lines)


def describe(cls: type[Task]) -> TaskDoc:
    """The documentation of one task class."""
    doc = inspect.getdoc(cls) or ""
    return TaskDoc(
        name=cls.name,
        summary=cls.summary or doc.split("\n\n")[0].replace("\n", " "),
        description=doc,
        params=[
            ParamDoc(name, _param_type(p), p.required, _default(p), p.help) for name, p in cls.params.items()
        ],
        example=_example(cls),
    )


def all_tasks() -> list[TaskDoc]:
    """Every registered task, by name."""
    return [describe(cls) for _, cls in sorted(load_all().items())]


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(docs: list[TaskDoc] | None = None) -> str:
    """docs/tasks.md: an index, then one section per task."""
    docs = all_tasks() if docs is None else docs
    out = [DOC_HEADER, "| task | what it does |", "|---|---|"]
    out += [f"| [`{d.name}`](#{d.name.replace('.', '')}) | {_md_cell(d.summary)} |" for d in docs]
    for d in docs:
        out += ["", f"## {d.name}", "", d.description or d.summary, ""]
        if d.params:
            out += ["| parameter | type | required | default | description |", "|---|---|---|---|---|"]
            for p in d.params:
                default = "" if p.required or p.default is None else f"`{p.default!r}`"
                out.append(
                    f"| `{p.name}` | {_md_cell(p.type)} | {'yes' if p.required else 'no'} "
                    f"| {_md_cell(default)} | {_md_cell(p.help)} |"
                )
        else:
            out.append("No parameters.")
        out += ["", "```yaml", d.example, "```"]
    return "\n".join(out) + "\n"
