"""Prometheus text exposition (version 0.0.4) of a flat {series: value} map. Sans-I/O.

A series is a metric name, optionally with labels: ``mesh_x_total`` or
``mesh_x_total{name="web",member="abc"}``. Names ending in ``_total`` are
counters, the rest gauges; the ``# TYPE`` line is written once per name, before
its series. Label values are escaped here (``label`` builds a series).
"""

from __future__ import annotations


def label(metric: str, /, **labels: str) -> str:
    """``metric{k="v",...}`` with the values escaped (backslash, quote, newline)."""
    if not labels:
        return metric
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(series: dict[str, float]) -> list[str]:
    lines: list[str] = []
    typed: set[str] = set()
    for key in sorted(series, key=lambda k: (k.partition("{")[0], k)):
        name = key.partition("{")[0]
        if name not in typed:
            typed.add(name)
            lines.append(f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}")
        lines.append(f"{key} {series[key]:g}")
    return lines
