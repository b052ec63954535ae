"""Exit code 70, a bug, at the CLI's border: one line, no traceback (issue 21's table).

Every other code in the README's table comes from a real CLI test (2, 3, 4, 5 in
test_errors.py, 6 in test_errors.py and test_gateway.py, 7 in test_gateway.py,
130 and 0 in test_errors.py, 1 in test_home.py). A bug has no honest trigger, so
this runs the CLI's own runner around a coroutine that fails the way a bug would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BUG = """
from mesh.cli.common import Output, run_until_stopped
async def main():
    raise RuntimeError("a bug")
run_until_stopped(Output({as_json}), main)
"""


@pytest.mark.parametrize("as_json", [True, False])
def test_a_bug_exits_70_with_one_line(as_json: bool) -> None:
    res = subprocess.run([sys.executable, "-c", BUG.format(as_json=as_json)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 70
    assert "Traceback" not in res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    text = json.loads(lines[0])["message"] if as_json else lines[0]
    assert "internal error: RuntimeError: a bug" in text
