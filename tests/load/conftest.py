"""Load tests report their measurements at the end of every session (with or without ``-s``)."""

from __future__ import annotations

import pytest

MEASURED = ("hosts", "forks", "max_concurrent_sessions", "wall_seconds", "controller_peak_rss_mib")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per load test: the numbers it stored with ``record_property``.

    ``record_property`` values travel with the test report, so this works
    under pytest-xdist too (the summary is printed by the controlling process).
    """
    lines = []
    for report in terminalreporter.stats.get("passed", []):
        props = dict(getattr(report, "user_properties", []))
        if "controller_peak_rss_mib" in props:
            shown = ", ".join(f"{key} {props[key]}" for key in MEASURED if key in props)
            lines.append(f"{report.nodeid}: {shown}")
    if lines:
        terminalreporter.write_sep("-", "load measurements")
        for line in lines:
            terminalreporter.write_line(line)
