"""Grouping datagrams for UDP segmentation offload, and splitting a coalesced read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.proto import udpbatch


def test_equal_datagrams_go_together_up_to_the_limits() -> None:
    grams = [bytes([i]) * 1437 for i in range(100)]
    runs = list(udpbatch.runs(grams, 65000, 64))
    assert [len(r) for _, r in runs] == [45, 45, 10]  # 45 * 1437 = 64665 <= 65000
    assert all(size == 1437 for size, _ in runs)


def test_a_shorter_datagram_ends_a_run_and_a_longer_one_starts_one() -> None:
    grams = [b"a" * 100, b"b" * 100, b"c" * 40, b"d" * 100, b"e" * 200, b"f" * 200]
    assert [(size, [len(g) for g in run]) for size, run in udpbatch.runs(grams, 65000, 64)] == [
        (100, [100, 100, 40]), (100, [100]), (200, [200, 200])]


def test_split_cuts_at_the_segment_size() -> None:
    assert udpbatch.split(b"aaabbbcc", 3) == [b"aaa", b"bbb", b"cc"]
    assert udpbatch.split(b"abc", 0) == [b"abc"]
    assert udpbatch.split(b"abc", 3) == [b"abc"]


@given(st.lists(st.integers(1, 3000), max_size=200), st.integers(1, 64),
       st.integers(3000, 65000))
def test_runs_keep_order_and_what_the_kernel_accepts(sizes: list[int], segments: int,
                                                     limit: int) -> None:
    grams = [i.to_bytes(4, "big") * (n // 4) + b"x" * (n % 4) for i, n in enumerate(sizes)]
    runs = list(udpbatch.runs(grams, limit, segments))
    assert [g for _, run in runs for g in run] == grams
    for size, run in runs:
        assert 1 <= len(run) <= segments and sum(map(len, run)) <= max(limit, len(run[0]))
        assert all(len(g) == size for g in run[:-1]) and len(run[-1]) <= size
        assert udpbatch.split(b"".join(run), size) == run
