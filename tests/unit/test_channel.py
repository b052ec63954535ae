"""The data channel's hold of messages that arrive before anyone listens.

The race it closes: the sharer answers on ``mesh-ctl`` (its challenge) in the
loop turns between the association coming up and the connector's control
pump registering its listener; the challenge used to be dropped and the
attempt timed out in admission.
"""

from __future__ import annotations

import asyncio

import pytest

from mesh.transport.channel import HELD_MAX, Channel
from mesh.transport.datapath import DataPath


def _path() -> DataPath:
    return DataPath(on_channel=lambda c: None, on_ready=lambda: None,
                    on_end=lambda r, p: None, on_packet_size=lambda s, d: None)


def _channel() -> Channel:
    return Channel(_path(), "mesh-ctl")


async def test_messages_before_a_listener_reach_it_in_order() -> None:
    channel = _channel()
    got: list[bytes | str] = []
    channel.emit("message", b"one")
    channel.emit("message", "two")
    channel.on("message", got.append)
    assert got == []  # handed over one loop turn later, not inside on()
    channel.emit("message", b"three")  # arrives before the release: stays behind the held ones
    await asyncio.sleep(0)
    assert got == [b"one", "two", b"three"]
    channel.emit("message", b"four")  # nothing held any more: straight through
    assert got == [b"one", "two", b"three", b"four"]


async def test_a_listener_removed_mid_release_leaves_the_rest_held() -> None:
    channel = _channel()
    first: list[bytes | str] = []

    def take_one(message: bytes | str) -> None:
        first.append(message)
        channel.remove_listener("message", take_one)

    for i in range(3):
        channel.emit("message", bytes([i]))
    channel.on("message", take_one)
    await asyncio.sleep(0)
    assert first == [b"\x00"]
    later: list[bytes | str] = []
    channel.on("message", later.append)
    await asyncio.sleep(0)
    assert later == [b"\x01", b"\x02"]


async def test_a_failing_listener_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    channel = _channel()
    got: list[bytes | str] = []

    def broken(message: bytes | str) -> None:
        raise RuntimeError("bug")

    channel.emit("message", b"a")
    channel.emit("message", b"b")
    channel.on("message", broken)
    channel.on("message", got.append)
    await asyncio.sleep(0)
    assert got == [b"a", b"b"]
    assert "listener failed" in caplog.text


async def test_what_nobody_reads_is_held_only_up_to_the_bound() -> None:
    channel = _channel()
    chunk = b"x" * (HELD_MAX // 4)
    for _ in range(6):
        channel.emit("message", chunk)
    got: list[bytes | str] = []
    channel.on("message", got.append)
    await asyncio.sleep(0)
    assert len(got) == 4


async def test_a_peer_cannot_park_data_in_channels_nobody_reads() -> None:
    """The bound is per connection, not per channel: a hundred unread channels hold no
    more than one; a channel closed from this side holds nothing, and what it held
    goes back to the budget."""
    path = _path()
    channels = [Channel(path, f"c{i}") for i in range(100)]
    for channel in channels:
        channel.readyState = "open"
        for _ in range(10):
            channel.emit("message", b"y" * 4096)
    assert path.held <= HELD_MAX
    assert sum(c._held_bytes for c in channels) == path.held
    first = channels[0]
    held_before = path.held
    first.close()
    first.emit("message", b"z" * 4096)  # the peer still sends: not held
    assert first._held_bytes == 0 and path.held == held_before - 10 * 4096
