"""Builds mesh's SCTP/data-channel core with mypyc when it can; plain Python when not.

Everything else about the package is in pyproject.toml. The compiled modules
are the sans-I/O hot path (mesh/proto/sctp and the PLPMTUD search it drives).
They compile when mypyc and a C compiler are present (the build requires mypy,
so pip brings mypyc; gcc or cc must be on the machine). With
``MESH_PURE_PYTHON=1``, with no compiler, or when compiling fails for any
reason, the build goes on without them and the same modules run as Python
(tests/unit/test_compiled.py runs that fallback).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
GROUP = "mesh_sctp_core"
"""The shared library mypyc puts the compiled code in (tests/unit/test_compiled.py)."""
COMPILED = sorted(str(p.relative_to(HERE)) for p in (HERE / "mesh/proto/sctp").glob("*.py")
                  if p.name != "__init__.py") + ["mesh/proto/plpmtud.py"]


class OptionalBuildExt(build_ext):
    """A failed compile is a warning: the pure-Python modules are complete."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"mesh: compiling the SCTP core failed ({exc}); it runs as plain Python",
                  file=sys.stderr)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            print(f"mesh: {getattr(ext, 'name', ext)} not compiled ({exc})", file=sys.stderr)


def extensions() -> list[object]:
    if os.environ.get("MESH_PURE_PYTHON"):
        return []
    if not any(shutil.which(cc) for cc in (os.environ.get("CC", "gcc"), "gcc", "cc", "clang")):
        print("mesh: no C compiler; the SCTP core runs as plain Python", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("mesh: mypyc is not installed; the SCTP core runs as plain Python",
              file=sys.stderr)
        return []
    try:
        return list(mypycify(COMPILED, opt_level="3", group_name=GROUP))
    except BaseException as exc:  # mypyc reports type errors with SystemExit
        print(f"mesh: mypyc could not compile the SCTP core ({exc!r}); plain Python",
              file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
