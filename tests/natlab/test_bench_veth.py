"""The 1500-MTU veth benchmark runs, end to end, on a short download (it is the
measurement issue 14's figures come from; this keeps it from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_veth_benchmark_measures_each_path(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/veth.py"), "--paths", "tcp,mesh,aiortc",
         "--size-mb", "4", "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    paths = json.loads((tmp_path / "veth.json").read_text())["paths"]
    for name in ("tcp", "mesh", "aiortc"):
        assert paths[name]["mb_s"] > 0, paths[name]
    assert paths["mesh"]["packet_bytes"] == 1400  # PLPMTUD's size on a 1500-MTU link
    assert paths["mesh"]["us_per_1400b_a"] > 0 and paths["mesh"]["x_floor"] > 0
    assert "| mesh |" in (tmp_path / "veth.md").read_text()
