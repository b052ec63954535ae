"""Counts the generated cases of the fuzz suite and reports the total."""

from __future__ import annotations

import os
from typing import Any

CASES = {"n": 0}
MIN_TOTAL = 100_000


def scaled(n: int) -> int:
    return max(10, int(n * float(os.environ.get("MESH_FUZZ_SCALE", "1"))))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CASES["n"]:
        terminalreporter.section("fuzz")
        terminalreporter.write_line(f"{CASES['n']} generated cases fed to remote-reachable parsers")
