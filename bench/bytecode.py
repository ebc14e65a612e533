"""Compile infratool's own modules to bytecode before anything is timed.

Why: infratool is an editable install (``pip install -e``, scripts/setup.sh),
so its modules are imported from the source tree, where pip never compiled
them; and the lab machines set ``PYTHONDONTWRITEBYTECODE=1``, so no run ever
leaves a ``.pyc`` behind either. Every timed infratool run then compiled each
module it imports from source again (58 of its 143 modules in a bench no-op
run, 30-70 ms of CPU), while Fabric, paramiko and pyinfra are imported from
site-packages that pip compiled at install. That is a cost of this checkout, not of infratool.

``ensure()`` writes the ``__pycache__`` files with the stdlib ``compileall``
(which writes them explicitly, whatever ``PYTHONDONTWRITEBYTECODE`` says),
for the interpreter running the benchmark, the one the timed runs use
(``sys.executable``). ``scripts/setup.sh`` does the same after its install,
so operators' runs do not pay it either. Only out-of-date files are
rewritten: a second call costs a ``stat`` per module.
"""

from __future__ import annotations

import compileall
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What the timed runs import from source: infratool itself. The lab package
# (lab/infratool_lab) is imported by the benchmark process, outside the timing,
# and by no infratool command the benchmarks time (only `infratool lab ...`);
# it is compiled as well so the lab's own start-up is not skewed either.
PACKAGES = ("infratool", "infratool_lab")


def package_dir(name: str) -> Path | None:
    """The directory ``name`` is imported from (the source tree, for an editable install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def ensure(extra: list[Path] | None = None) -> bool:
    """Compile the packages' sources (and the ``extra`` trees) where out of date; True if all compiled."""
    dirs = [d for d in (package_dir(name) for name in PACKAGES) if d is not None]
    dirs += list(extra or [])
    ok = True
    for d in dirs:
        ok = bool(compileall.compile_dir(d, quiet=1)) and ok
    return ok
