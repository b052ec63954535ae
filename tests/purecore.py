"""The compiled SCTP core's modules, and a way to import them from their .py files.

setup.py compiles these modules with mypyc; ``import_as_python`` makes this process
import them from source even where the install left compiled ones beside them, so the
plain-Python fallback can be tested (tests/unit/test_compiled.py) and measured
(benchmarks/core.py --pure) on a machine that has a compiler.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted(p for p in (ROOT / "mesh/proto/sctp").glob("*.py") if p.name != "__init__.py"),
           ROOT / "mesh/proto/plpmtud.py"]
MODULES = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in SOURCES]


class _SourceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if name not in MODULES:
            return None
        for entry in path or sys.path:
            candidate = Path(entry) / (name.rsplit(".", 1)[-1] + ".py")
            if candidate.exists():
                return importlib.util.spec_from_file_location(name, candidate)
        return None


def import_as_python() -> None:
    """From now on, the core's modules load from their .py files (call before importing)."""
    sys.meta_path.insert(0, _SourceOnly())
