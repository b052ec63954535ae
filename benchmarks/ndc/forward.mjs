// The libdatachannel anchor: benchmarks/floor.py's port forwarder, on node-datachannel.
//
//   node forward.mjs listen PORT       # the `connect` side: prints its offer
//   node forward.mjs dial HOST:PORT    # the `share` side: reads the offer
//
// Same protocol as floor.py: one JSON line each way on stdin/stdout
// ({"offer": sdp}, {"answer": sdp}, then {"listening": port, "open_ms": t}).
// Each TCP connection accepted by `listen` gets its own ordered, reliable data
// channel; `dial` connects it to HOST:PORT. Both pause on bufferedAmount.
// libdatachannel's defaults otherwise (its SCTP, usrsctp, picks its own packet size).
import net from "node:net";
import readline from "node:readline";
import nodeDataChannel from "node-datachannel";

const HIGH = 1 << 20;
const LOW = 256 << 10;
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function peer(name) {
  const pc = new nodeDataChannel.PeerConnection(name, { iceServers: [] });
  const gathered = new Promise((resolve) => {
    pc.onGatheringStateChange((state) => {
      if (state === "complete") resolve(pc.localDescription().sdp);
    });
  });
  return { pc, gathered };
}

function pipe(dc, socket) {
  dc.setBufferedAmountLowThreshold(LOW);
  dc.onBufferedAmountLow(() => socket.resume());
  dc.onMessage((msg) => {
    if (typeof msg === "string") socket.end(); // "eof"
    else if (!socket.write(Buffer.from(msg))) {
      // the TCP side is slower than the channel: nothing to pause here but the
      // socket buffer; node queues, as floor.py's asyncio writer does
    }
  });
  dc.onClosed(() => socket.destroy());
  socket.on("data", (data) => {
    dc.sendMessageBinary(data);
    if (dc.bufferedAmount() > HIGH) socket.pause();
  });
  socket.on("end", () => {
    if (dc.isOpen()) dc.sendMessage("eof");
  });
  socket.on("error", () => dc.close());
  socket.on("close", () => setTimeout(() => dc.isOpen() && dc.close(), 1000));
}

async function listen(port) {
  const { pc, gathered } = peer("listen");
  const t0 = performance.now();
  const ctl = pc.createDataChannel("ctl");
  const opened = new Promise((resolve) => ctl.onOpen(resolve));
  pc.setLocalDescription();
  say({ offer: await gathered });
  const answer = JSON.parse(await nextLine());
  pc.setRemoteDescription(answer.answer, "answer");
  await opened;
  const openMs = performance.now() - t0;
  const server = net.createServer((socket) => {
    socket.pause();
    const dc = pc.createDataChannel("tcp");
    dc.onOpen(() => {
      pipe(dc, socket);
      socket.resume();
    });
  });
  server.listen(port, "127.0.0.1", () => {
    say({ listening: server.address().port, open_ms: Math.round(openMs * 10) / 10 });
  });
}

async function dial(target) {
  const i = target.lastIndexOf(":");
  const host = target.slice(0, i);
  const port = Number(target.slice(i + 1));
  const { pc, gathered } = peer("dial");
  pc.onDataChannel((dc) => {
    if (dc.getLabel() !== "tcp") return;
    const early = [];
    dc.onMessage((msg) => early.push(msg));
    const socket = net.connect(port, host, () => {
      for (const msg of early) {
        if (typeof msg === "string") socket.end();
        else socket.write(Buffer.from(msg));
      }
      pipe(dc, socket);
    });
    socket.on("error", () => dc.close());
  });
  const offer = JSON.parse(await nextLine());
  pc.setRemoteDescription(offer.offer, "offer");
  say({ answer: await gathered });
}

const [role, arg] = process.argv.slice(2);
if (role === "listen") listen(Number(arg));
else dial(arg);
