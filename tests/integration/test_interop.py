"""mesh's own data plane against itself, stock aiortc and headless Chromium, over loopback.

Each pair is two real peer connections (ICE, DTLS, SCTP, data channels) on
127.0.0.1: mesh ``Peer``s in this process, a stock aiortc
``RTCPeerConnection`` beside one, or a page in Chromium. Messages from 1 byte
to 256 KiB go both ways on an ordered and an unordered channel and must arrive
byte-exact; a stock peer, which never announced path MTU discovery, must never
be sent an SCTP packet over the 1189-byte base size.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from mesh.proto import plpmtud
from mesh.transport.channel import Channel
from mesh.transport.ice import IcePlan, IceSettings
from mesh.transport.peer import Peer
from tests.conftest import require_tool

SIZES = [1, 2, 3, 1159, 1160, 1161, 1188, 1189, 1400, 4096, 16355, 16356, 16357, 65535,
         65536, 100_000, 262_143, 262_144]
LOOPBACK = IceSettings(host_addresses=("127.0.0.1",))


@pytest.fixture(autouse=True)
def stock_gathers_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stock aiortc gathers on every interface but loopback; keep its traffic on
    127.0.0.1 too (a test-only patch: mesh's own peers take ``host_addresses``)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"])
    yield


def payloads(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in SIZES]


class Collector:
    """Messages per channel label, and an event when a label has ``want`` of them."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.got: dict[str, list[Any]] = {}
        self.full: dict[str, asyncio.Event] = {}

    def watch(self, label: str, channel: Any) -> None:
        self.full.setdefault(label, asyncio.Event())

        def on_message(message: Any) -> None:
            box = self.got.setdefault(label, [])
            box.append(message)
            if len(box) >= self.want:
                self.full[label].set()
        channel.on("message", on_message)

    async def wait(self, *labels: str) -> None:
        for label in labels:
            self.full.setdefault(label, asyncio.Event())
        await asyncio.wait_for(asyncio.gather(*(self.full[x].wait() for x in labels)), 60)


async def until(condition: Any, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def opened(channel: Any) -> None:
    if channel.readyState != "open":
        ready = asyncio.Event()
        channel.on("open", ready.set)
        await asyncio.wait_for(ready.wait(), 20)


def check(got: dict[str, list[Any]], sent: list[bytes]) -> None:
    assert got["ordered"] == sent
    assert sorted(got["unordered"], key=len) == sorted(sent, key=len)


def send_all(channels: dict[str, Any], messages: list[bytes]) -> None:
    """Each message on the ordered and on the unordered channel."""
    for data in messages:
        channels["ordered"].send(data)
        channels["unordered"].send(data)


async def mesh_and_mesh(discover: bool = True) -> tuple[int, int]:
    settings = IceSettings(host_addresses=("127.0.0.1",), plpmtud=discover)
    a, b = Peer(IcePlan(), ice=settings), Peer(IcePlan(), ice=settings)
    at_a, at_b = Collector(len(SIZES)), Collector(len(SIZES))
    b_channels: dict[str, Channel] = {}

    def on_channel(channel: Channel) -> None:
        at_b.watch(channel.label, channel)
        b_channels[channel.label] = channel
    b.on_channel(on_channel)
    try:
        await a.accept(await b.answer(await a.offer()))
        await asyncio.gather(a.connected(10), b.connected(10))
        ordered, unordered = a.open_channel("ordered"), a.open_channel("unordered",
                                                                       ordered=False)
        at_a.watch("ordered", ordered)
        at_a.watch("unordered", unordered)
        await asyncio.sleep(0.6)  # path MTU discovery settles in one round
        sent_a, sent_b = payloads(1), payloads(2)
        send_all({"ordered": ordered, "unordered": unordered}, sent_a)
        await until(lambda: {"ordered", "unordered"} <= b_channels.keys())
        send_all(b_channels, sent_b)
        await at_b.wait("ordered", "unordered")
        await at_a.wait("ordered", "unordered")
        check(at_b.got, sent_a)
        check(at_a.got, sent_b)
        return a.packet_size, b.packet_size
    finally:
        await a.close()
        await b.close()
        assert a.state == b.state == "closed"


def test_mesh_pair_finds_16k_packets_and_moves_every_message_intact() -> None:
    assert asyncio.run(mesh_and_mesh()) == (16384, 16384)


def test_discovery_can_be_turned_off() -> None:
    assert asyncio.run(mesh_and_mesh(discover=False)) == (plpmtud.BASE, plpmtud.BASE)


async def mesh_and_stock(mesh_offers: bool) -> int:
    peer = Peer(IcePlan(), ice=LOOPBACK)
    stock = RTCPeerConnection()
    at_mesh, at_stock = Collector(len(SIZES)), Collector(len(SIZES))
    stock_channels: dict[str, Any] = {}
    mesh_channels: dict[str, Channel] = {}

    @stock.on("datachannel")
    def on_stock_channel(channel: Any) -> None:
        stock_channels[channel.label] = channel
        at_stock.watch(channel.label, channel)

    def on_mesh_channel(channel: Channel) -> None:
        mesh_channels[channel.label] = channel
        at_mesh.watch(channel.label, channel)
    peer.on_channel(on_mesh_channel)
    try:
        if mesh_offers:
            offer = await peer.offer()
            await stock.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await stock.setLocalDescription(await stock.createAnswer())
            await peer.accept(stock.localDescription.sdp)
            await peer.connected(20)
            for label, ordered in (("ordered", True), ("unordered", False)):
                channel = peer.open_channel(label, ordered=ordered)
                mesh_channels[label] = channel
                at_mesh.watch(label, channel)
            await until(lambda: {"ordered", "unordered"} <= stock_channels.keys())
        else:
            for label, ordered in (("ordered", True), ("unordered", False)):
                channel = stock.createDataChannel(label, ordered=ordered)
                stock_channels[label] = channel
                at_stock.watch(label, channel)
            await stock.setLocalDescription(await stock.createOffer())
            answer = await peer.answer(stock.localDescription.sdp)
            await stock.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await peer.connected(20)
            await until(lambda: {"ordered", "unordered"} <= mesh_channels.keys())
        for channel in stock_channels.values():
            await opened(channel)
        sent_mesh, sent_stock = payloads(3), payloads(4)
        send_all(mesh_channels, sent_mesh)
        send_all(stock_channels, sent_stock)
        await at_stock.wait("ordered", "unordered")
        await at_mesh.wait("ordered", "unordered")
        check(at_stock.got, sent_mesh)
        check(at_mesh.got, sent_stock)
        return peer.largest_packet
    finally:
        await peer.close()
        await stock.close()


@pytest.mark.parametrize("mesh_offers", [True, False],
                         ids=["mesh-offers-to-stock", "stock-offers-to-mesh"])
def test_mesh_interoperates_with_stock_aiortc(mesh_offers: bool) -> None:
    largest = asyncio.run(mesh_and_stock(mesh_offers))
    assert 1000 < largest <= plpmtud.BASE  # never over the base size to a stock peer


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 "--disable-features=WebRtcHideLocalIpsWithMdns",
                 "--allow-loopback-in-peer-connection"]

PAGE_OFFER = """async () => {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  window.received = {ordered: [], unordered: []};
  window.chans = {};
  for (const [label, ordered] of [["ordered", true], ["unordered", false]]) {
    const ch = pc.createDataChannel(label, {ordered});
    ch.binaryType = "arraybuffer";
    ch.onmessage = (e) => window.received[label].push(new Uint8Array(e.data));
    window.chans[label] = ch;
  }
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") done();
    });
  });
  return pc.localDescription.sdp;
}"""

PAGE_SEND = """async (sizes) => {
  const open = (ch) => new Promise((done) => ch.readyState === "open" ? done()
                                               : ch.addEventListener("open", done));
  window.sent = sizes.map((n) => {
    const a = new Uint8Array(n);
    for (let i = 0; i < n; i++) a[i] = (i * 31 + n) & 255;
    return a;
  });
  for (const ch of Object.values(window.chans)) {
    await open(ch);
    for (const a of window.sent) ch.send(a);
  }
}"""

PAGE_CHECK = """() => {
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const sorted = (xs) => [...xs].sort((a, b) => a.length - b.length);
  const sent = sorted(window.sent);
  return {
    ordered: window.received.ordered.length === window.sent.length &&
             window.received.ordered.every((m, i) => same(m, window.sent[i])),
    unordered: window.received.unordered.length === sent.length &&
               sorted(window.received.unordered).every((m, i) => same(m, sent[i])),
  };
}"""


def test_chromium_opens_data_channels_to_a_mesh_peer() -> None:
    """A page offers two channels; mesh answers and echoes every message back."""
    chromium = require_tool("chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto("about:blank")
            offer = page.evaluate(PAGE_OFFER)
            # only the page's loopback candidates: test traffic stays on 127.0.0.1
            offer = "".join(line for line in offer.splitlines(keepends=True)
                            if not line.startswith("a=candidate:") or " 127.0.0.1 " in line)
            loop = asyncio.new_event_loop()  # mesh runs here while the page is driven
            thread = threading.Thread(target=loop.run_forever, daemon=True)
            thread.start()

            def call(coro: Any) -> Any:
                return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

            async def make() -> Peer:
                return Peer(IcePlan(), ice=LOOPBACK)
            peer = call(make())
            echoed: dict[str, int] = {}

            def on_channel(channel: Channel) -> None:
                def echo(message: bytes | str) -> None:
                    echoed[channel.label] = echoed.get(channel.label, 0) + 1
                    channel.send(message)
                channel.on("message", echo)
            peer.on_channel(on_channel)
            try:
                answer = call(peer.answer(offer))
                page.evaluate("sdp => window.pc.setRemoteDescription({type: 'answer', sdp})",
                              answer)
                call(peer.connected(20))
                page.evaluate(PAGE_SEND, SIZES)
                page.wait_for_function(
                    "n => window.received.ordered.length + window.received.unordered.length"
                    " >= n", arg=2 * len(SIZES), timeout=60_000)
                assert echoed == {"ordered": len(SIZES), "unordered": len(SIZES)}
                assert page.evaluate(PAGE_CHECK) == {"ordered": True, "unordered": True}
                assert peer.largest_packet <= plpmtud.BASE  # the browser announced no more
            finally:
                call(peer.close())
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()
        finally:
            browser.close()


def test_an_unadmitted_peer_gets_a_small_window_and_an_admitted_one_the_full_one() -> None:
    """What a stranger can make the sharer hold before admission is bounded by the
    window the sharer announces (a sender that ignores it is aborted: test_sctp.py)."""
    from mesh.node.share_peer import ADMITTED_WINDOW, UNADMITTED_WINDOW

    async def run() -> tuple[int, int]:
        stranger, sharer = Peer(IcePlan(), ice=LOOPBACK), Peer(
            IcePlan(), ice=LOOPBACK, window=UNADMITTED_WINDOW)
        try:
            await stranger.accept(await sharer.answer(await stranger.offer()))
            await asyncio.gather(stranger.connected(10), sharer.connected(10))
            before = stranger._path.core.association.sender.peer_rwnd
            sharer.set_window(ADMITTED_WINDOW)
            assert stranger.control is not None
            for _ in range(3):  # data draws SACKs, which carry the new window
                stranger.control.send(b"x")
                await asyncio.sleep(0.1)
            return before, stranger._path.core.association.sender.peer_rwnd
        finally:
            await stranger.close()
            await sharer.close()

    before, after = asyncio.run(run())
    assert before <= UNADMITTED_WINDOW < ADMITTED_WINDOW - 65536 <= after
