"""The pool roster (mesh/proto/roster.py) and the broker's rules for it (signaling/)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proto import frames as p
from mesh.proto.identity import Identity
from mesh.proto.roster import MAX_MEMBERS, RosterError, parse_roster, roster_for, sign_roster
from signaling.broker import Broker, MemoryBroker
from signaling.naming import name_op

OWNER, B, C = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))


def test_a_signed_roster_round_trips_and_lists_the_owner_first() -> None:
    r = sign_roster(OWNER, "web", {C.node_id, B.node_id, OWNER.node_id}, 3)
    assert r.members == tuple(sorted([B.node_id, C.node_id]))  # the owner is never a member
    back = parse_roster(r.encode())
    assert back == r and back.nodes()[0] == OWNER.node_id


@pytest.mark.parametrize("change", [
    lambda o: o.update(members=[o["members"][0], o["members"][0]]),  # duplicate
    lambda o: o.update(members=list(reversed(o["members"]))),  # unsorted
    lambda o: o.update(seq=o["seq"] + 1),  # signature no longer matches
    lambda o: o.update(name="other"),
    lambda o: o.update(owner=B.node_id),  # claims another owner
    lambda o: o.update(sig="AAAA"),
    lambda o: o.update(seq=-1),
    lambda o: o.update(seq=True),
    lambda o: o.update(members="x"),
    lambda o: o.update(name="Not A Label"),
])
def test_tampered_rosters_are_refused(change: object) -> None:
    obj = json.loads(sign_roster(OWNER, "web", {B.node_id, C.node_id}, 1).encode())
    change(obj)  # type: ignore[operator]
    with pytest.raises(RosterError):
        parse_roster(json.dumps(obj))


def test_a_roster_signed_by_anyone_else_does_not_count() -> None:
    forged = sign_roster(B, "web", {C.node_id}, 9)  # B signs a roster naming itself owner
    assert roster_for(forged.encode(), "web", OWNER.node_id) is None
    assert roster_for(forged.encode(), "web", B.node_id) is not None
    assert roster_for("not json", "web", OWNER.node_id) is None
    assert roster_for(None, "web", OWNER.node_id) is None


def test_pools_are_bounded() -> None:
    many = {Identity.from_seed(bytes([i, 7]) * 16).node_id for i in range(MAX_MEMBERS + 1)}
    with pytest.raises(RosterError):
        sign_roster(OWNER, "web", many, 1)


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_parse_roster_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(RosterError):
        parse_roster(text)


def test_name_frames_carry_the_roster_and_who_is_online() -> None:
    roster = sign_roster(OWNER, "web", {B.node_id}, 1).encode()
    op = p.parse_client_frame(p.encode(p.NameOp("members", "web", 4, roster)))
    assert op == p.NameOp("members", "web", 4, roster)
    res = p.NameResult("lookup", "web", OWNER.node_id, None, 5, roster, (OWNER.node_id,))
    assert p.parse_server_frame(p.encode(res)) == res
    with pytest.raises(p.FrameError):
        p.parse_client_frame(json.dumps({"type": "name", "op": "members", "name": "web"}))
    with pytest.raises(p.FrameError):
        p.parse_server_frame(json.dumps({"type": "name", "op": "lookup", "name": "web",
                                         "owner": None, "gateway": None, "online": ["x"]}))


async def pool_rules(broker: Broker, other: Broker) -> None:
    """The server's pool rules; ``other`` is another instance of the same tier (or the
    same broker): what one stores, the other enforces."""
    assert isinstance(await name_op(broker, OWNER.node_id, "claim", "web", None),
                      p.NameResult)
    # B may not claim yet, nor store a roster (its own or the owner's)
    assert (await name_op(other, B.node_id, "claim", "web", None))[0] == "name-taken"
    mine = sign_roster(B, "web", {C.node_id}, 1).encode()
    assert (await name_op(broker, B.node_id, "members", "web", mine))[0] == "not-owner"
    good = sign_roster(OWNER, "web", {B.node_id}, 1).encode()
    assert (await name_op(broker, B.node_id, "members", "web", good))[0] == "not-owner"
    # the owner storing a roster signed by someone else is refused too
    assert (await name_op(broker, OWNER.node_id, "members", "web", mine))[0] == "bad-roster"
    stored = await name_op(broker, OWNER.node_id, "members", "web", good)
    assert isinstance(stored, p.NameResult) and stored.roster == good
    claimed = await name_op(other, B.node_id, "claim", "web", None)
    assert isinstance(claimed, p.NameResult) and claimed.owner == OWNER.node_id
    assert claimed.roster == good
    assert (await name_op(other, C.node_id, "claim", "web", None))[0] == "name-taken"
    # an older roster is not replayed over a newer one
    removed = sign_roster(OWNER, "web", set(), 2).encode()
    assert isinstance(await name_op(broker, OWNER.node_id, "members", "web", removed),
                      p.NameResult)
    assert (await name_op(other, OWNER.node_id, "members", "web", good))[0] == "stale-roster"
    assert (await name_op(other, B.node_id, "claim", "web", None))[0] == "name-taken"
    # releasing the name drops its pool
    await name_op(broker, OWNER.node_id, "members", "web",
                  sign_roster(OWNER, "web", {B.node_id}, 3).encode())
    await name_op(broker, OWNER.node_id, "release", "web", None)
    looked = await name_op(other, C.node_id, "lookup", "web", None)
    assert isinstance(looked, p.NameResult) and looked.roster is None
    assert looked.owner is None and looked.online == ()
    # a new holder starts a new pool from seq 1
    await name_op(other, C.node_id, "claim", "web", None)
    fresh = sign_roster(C, "web", {B.node_id}, 1).encode()
    assert isinstance(await name_op(broker, C.node_id, "members", "web", fresh), p.NameResult)


def test_the_server_rules_only_the_owner_changes_members_and_members_may_claim() -> None:
    broker = MemoryBroker()
    asyncio.run(pool_rules(broker, broker))
