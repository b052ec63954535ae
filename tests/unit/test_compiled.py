"""The SCTP core as the install built it (mypyc, setup.py) and its plain-Python fallback.

Where the README's install command had a C compiler, the core must be the
compiled one, and not older than its sources (an editable checkout keeps the
built modules beside the .py files, and a stale one would shadow an edit).
Wherever it runs, the same core must also work as plain Python: the sctp
unit tests run again in a process that imports the .py files only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.purecore import MODULES, ROOT, SOURCES

PURE = """
import sys
from tests.purecore import MODULES, import_as_python
import_as_python()
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]])
for name in MODULES:
    module = sys.modules.get(name)
    assert module is None or module.__file__.endswith(".py"), module
sys.exit(code)
"""


def _compiler() -> bool:
    return any(shutil.which(cc) for cc in ("gcc", "cc", "clang"))


def test_the_core_is_compiled_where_the_install_could_compile_it() -> None:
    if os.environ.get("MESH_PURE_PYTHON"):
        pytest.skip("MESH_PURE_PYTHON is set: the install left the core as Python")
    if not _compiler():
        pytest.skip("no C compiler here: the install left the core as Python")
    plain, stale = [], []
    # each module's .so is a stub that loads the shared one holding the code (mypyc's
    # group module): a rebuild may leave a stub's time alone, so the newer counts
    group = importlib.util.find_spec("mesh_sctp_core__mypyc")
    built_at = Path(str(group.origin)).stat().st_mtime if group and group.origin else 0.0
    for name, source in zip(MODULES, SOURCES, strict=True):
        module = importlib.import_module(name)
        path = Path(str(module.__file__))
        if path.suffix == ".py":
            plain.append(name)
        elif max(path.stat().st_mtime, built_at) < source.stat().st_mtime:
            stale.append(name)
    assert not plain, f"not compiled (run the README's install command): {plain}"
    assert not stale, f"older than their sources (run the install command again): {stale}"


def test_the_plain_python_core_passes_the_core_tests() -> None:
    res = subprocess.run(
        [sys.executable, "-c", PURE, "tests/unit/test_sctp.py",
         "tests/unit/test_plpmtud.py", "tests/unit/test_channel.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout
