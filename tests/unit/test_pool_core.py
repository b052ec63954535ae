"""The gateway's pool (mesh/node/pool.py): balancing and member health on a fake clock."""

from __future__ import annotations

import collections

import pytest

from mesh.node.pool import BACKOFF_MAX, EJECT_5XX, Pool, check_balance, member_token

NODES = ["a", "b", "c"]


def test_least_outstanding_prefers_the_idle_member_and_takes_turns_on_ties() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    pool.started("a")
    pool.started("a")
    pool.started("b")
    assert pool.pick(NODES, 0.0) == "c"
    picks = collections.Counter()
    fresh = Pool("least")
    fresh.keep(NODES)
    for _ in range(300):
        node = fresh.pick(NODES, 0.0)
        assert node is not None
        fresh.started(node)
        fresh.finished(node, 200, 0.0)
        picks[node] += 1
    assert picks == {"a": 100, "b": 100, "c": 100}


def test_round_robin_and_members_that_are_down() -> None:
    pool = Pool("round-robin")
    pool.keep(NODES)
    assert [pool.pick(NODES, 0.0) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert {pool.pick(["b"], 0.0) for _ in range(5)} == {"b"}
    assert pool.pick([], 0.0) is None


def test_a_connection_failure_ejects_with_a_doubling_backoff_then_it_returns() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    pool.started("a")
    pool.finished("a", None, 10.0)
    assert {pool.pick(NODES, 10.5) for _ in range(10)} == {"b", "c"}
    assert "a" in {pool.pick(NODES, 11.0) for _ in range(10)}  # 1 s later: back by itself
    pool.finished("a", None, 11.0)  # fails again: 2 s
    assert "a" not in {pool.pick(NODES, 12.9) for _ in range(10)}
    assert "a" in {pool.pick(NODES, 13.0) for _ in range(10)}
    for _ in range(20):
        pool.finished("a", None, 100.0)
    assert pool.members["a"].health.ejected_until == 100.0 + BACKOFF_MAX
    pool.finished("a", 200, 200.0)  # a success resets the count
    assert pool.members["a"].health.failures == 0


def test_5xx_in_a_row_eject_and_a_2xx_in_between_does_not() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    for _ in range(EJECT_5XX - 1):
        pool.finished("b", 503, 0.0)
    pool.finished("b", 200, 0.0)
    for _ in range(EJECT_5XX - 1):
        pool.finished("b", 500, 0.0)
    assert pool.members["b"].health.usable(0.0)
    pool.finished("b", 502, 0.0)
    assert not pool.members["b"].health.usable(0.5)


def test_when_every_member_is_ejected_all_are_used_anyway() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    for node in NODES:
        pool.finished(node, None, 0.0)
    assert {pool.pick(NODES, 0.1) for _ in range(9)} == set(NODES)


def test_hash_is_stable_and_moves_few_keys_when_a_member_leaves() -> None:
    pool = Pool("hash:X-User")
    pool.keep(NODES)
    before = {f"user{i}": pool.pick(NODES, 0.0, key=f"user{i}") for i in range(300)}
    assert before == {k: pool.pick(NODES, 0.0, key=k) for k in before}
    assert set(before.values()) == set(NODES)
    after = {k: pool.pick(["a", "b"], 0.0, key=k) for k in before}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == "c" for k in moved)  # only c's keys moved
    # no header: least outstanding
    assert pool.pick(NODES, 0.0, key=None) in NODES


def test_cookie_sticks_to_a_usable_member_only() -> None:
    pool = Pool("cookie")
    pool.keep(NODES)
    token = member_token("b")
    assert {pool.pick(NODES, 0.0, cookie=token) for _ in range(10)} == {"b"}
    pool.finished("b", None, 0.0)
    assert pool.pick(NODES, 0.5, cookie=token) != "b"
    assert pool.pick(NODES, 0.0, cookie="forged") in NODES
    assert member_token("b") != "b" and len(member_token("b")) == 16


def test_retry_avoids_the_member_that_failed_and_the_roster_can_shrink() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    assert {pool.pick(NODES, 0.0, avoid=("a",)) for _ in range(10)} == {"b", "c"}
    assert pool.pick(["a"], 0.0, avoid=("a",)) is None
    pool.keep(["a"])
    assert set(pool.members) == {"a"}


@pytest.mark.parametrize("mode,ok", [("least", True), ("round-robin", True), ("cookie", True),
                                     ("hash:X-User", True), ("hash:", False),
                                     ("hash:a b", False), ("random", False)])
def test_balance_modes(mode: str, ok: bool) -> None:
    assert (check_balance(mode) is None) == ok


def test_least_keeps_a_connections_member_unless_it_is_busier() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    assert {pool.pick(NODES, 0.0, prefer="b") for _ in range(10)} == {"b"}
    pool.started("b")  # one more than the others: still within the slack
    assert pool.pick(NODES, 0.0, prefer="b") == "b"
    pool.started("b")
    assert pool.pick(NODES, 0.0, prefer="b") in {"a", "c"}
    rr = Pool("round-robin")
    rr.keep(NODES)
    assert [rr.pick(NODES, 0.0, prefer="b") for _ in range(3)] == ["a", "b", "c"]


def test_a_request_the_caller_abandoned_says_nothing_of_the_members_health() -> None:
    pool = Pool("least")
    pool.keep(NODES)
    pool.finished("a", 503, 0.0)
    pool.finished("a", 503, 0.0)
    pool.started("a")
    pool.ended("a")  # the caller left before an answer: neither success nor failure
    assert pool.members["a"].outstanding == 0
    pool.finished("a", 503, 0.0)
    assert not pool.members["a"].health.usable(0.5)  # still the third 5xx in a row
