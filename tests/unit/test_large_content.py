"""Large managed files (issue 19 §3): capped diffs, content rendered in chunks, plans that carry a hash.

No timing and no memory figure is asserted here (bench/memory.py measures
those); these tests pin the mechanisms that bound them.
"""

from __future__ import annotations

import hashlib
import json
import string

from infratool.changes import Change
from infratool.context import HostContext
from infratool.diffs import DIFF_MAX_LINES, text_diff
from infratool.facts import FileState
from infratool.inventory import Host
from infratool.remote.writes import CHUNK
from infratool.tasks.lib.files import file_changes
from infratool.tasks.lib.source import LocalSource


def test_a_long_diff_shows_its_first_lines_then_how_many_more():
    new = "".join(f"line {i}\n" for i in range(5000))
    diff = text_diff(None, new, "/etc/big")
    lines = diff.split("\n")
    assert len(lines) == DIFF_MAX_LINES + 1
    assert lines[-1] == f"… {5000 + 3 - DIFF_MAX_LINES} more lines, diff too large"
    assert "+line 0" in lines and "+line 4999" not in diff


def test_changes_text_diff_is_capped_like_every_file_diff():
    # A task that builds its diff with changes.text_diff (not through the
    # files helpers) gets the same cap and the same last line.
    from infratool import changes

    new = "".join(f"line {i}\n" for i in range(5000))
    lines = changes.text_diff("".join(f"line {i}\n" for i in range(10)), new, "/etc/big").split("\n")
    assert len(lines) == DIFF_MAX_LINES + 1
    assert lines[-1].endswith(" more lines, diff too large") and lines[-1].startswith("… ")
    assert "+line 4999" in text_diff("", new[-100:], "/etc/small")  # short diffs: whole


def test_a_short_diff_is_untouched():
    diff = text_diff("a\nb\n", "a\nc\n", "/etc/small")
    assert diff.splitlines()[-2:] == ["-b", "+c"] and "too large" not in diff


def test_a_huge_new_text_is_not_diffed_line_by_line():
    new = "x" * 80 + "\n"
    diff = text_diff(None, new * 40_000, "/etc/huge")  # 3.2 MB, above DIFF_MAX_INPUT
    assert len(diff) < 40_000
    assert diff.endswith(f"… {40_000 - DIFF_MAX_LINES} more lines, diff too large")
    changed = text_diff(new * 20_000, new * 40_000, "/etc/huge")
    assert changed.endswith("(content 1620000 bytes → 3240000 bytes, diff too large)")


def test_a_template_rendered_in_blocks_equals_the_whole_text_substituted(tmp_path):
    # A placeholder straddling the first block's end, lines of every length,
    # a `$$`, an unknown `$name` and a CRLF line: block rendering must give
    # exactly what one safe_substitute over the whole text gives.
    filler = "a" * (CHUNK - 3)
    text = filler + "${host}\n" + "".join(f"{i} $host $$ $nope ${{user}}\r\n" for i in range(20_000))
    tpl = tmp_path / "big.tpl"
    tpl.write_bytes(text.encode())
    variables = {"host": "snix", "address": "10.0.0.1", "user": "root"}
    expected = string.Template(tpl.read_text()).safe_substitute(variables).encode()
    source = LocalSource(str(tpl), variables)
    chunks = list(source.chunks())
    assert b"".join(chunks) == expected
    assert len(chunks) > 2 and max(map(len, chunks)) < 2 * CHUNK  # produced a block at a time
    survey = source.survey()
    assert survey.size == len(expected) and survey.sha256 == hashlib.sha256(expected).hexdigest()
    assert survey.lines == expected.count(b"\n") and survey.head[0].endswith("snix\n")


def test_a_verbatim_source_is_read_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000  # binary, 1.28 MB
    path = tmp_path / "blob"
    path.write_bytes(data)
    chunks = list(LocalSource(str(path)).chunks())
    assert b"".join(chunks) == data and max(map(len, chunks)) == CHUNK


def test_a_large_file_change_carries_the_source_and_its_hash_not_the_bytes(tmp_path):
    tpl = tmp_path / "site.tpl"
    tpl.write_text("".join(f"row {i} on $host\n" for i in range(100_000)))  # 1.8 MB
    host = Host("snix", "127.0.0.1")
    ctx = HostContext(host, facts=None, remote=None, overlay={"/srv/site": FileState(exists=False)})
    source = LocalSource(str(tpl), {"host": "snix"})
    [change] = file_changes(ctx, "files.content", "/srv/site", source, 0o644, None, None)
    assert isinstance(change, Change) and change.op == "files.stream"
    rendered = source.read()
    assert change.args["sha256"] == hashlib.sha256(rendered).hexdigest()
    assert change.args["size"] == len(rendered) and change.args["source"] == str(tpl)
    # Plain values only (a plan file stores them): no bytes, nothing large.
    assert len(json.dumps(change.args)) < 1000
    assert len(change.diff.splitlines()) == 3 + DIFF_MAX_LINES + 1
    assert change.diff.splitlines()[-1] == f"… {100_000 - DIFF_MAX_LINES} more lines, diff too large"
    # The next task in the run sees the planned file by its hash and size, not its content.
    planned = ctx.file("/srv/site")
    assert (
        planned.content is None and planned.sha256 == change.args["sha256"] and planned.size == len(rendered)
    )
    # Planned again with the file in place (same hash): nothing to do.
    ctx.overlay["/srv/site"] = FileState(True, True, 0o644, "root", "root", len(rendered), planned.sha256)
    assert file_changes(ctx, "files.content", "/srv/site", source, 0o644, None, None) == []


def test_a_template_that_is_not_utf8_is_bad_input_naming_it(tmp_path):
    import pytest

    from infratool.errors import InputError

    tpl = tmp_path / "latin1.tpl"
    tpl.write_bytes("caf\xe9 $host\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        LocalSource(str(tpl), {"host": "snix"}).survey()
    assert str(tpl) in str(info.value) and "not UTF-8" in str(info.value)
