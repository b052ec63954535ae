"""Run inside a lab router namespace: a router whose port mapping is broken.

It answers every PCP/NAT-PMP datagram on port 5351 with garbage, and every SSDP
M-SEARCH with an InternetGatewayDevice whose description URL (on the router itself)
is a TCP port that accepts and never answers (``dead``) or answers garbage
(``garbage``). mesh must lose no time to it. Usage: ``deadrouter.py LAN_IP dead|garbage``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

LAN_IP, MODE = sys.argv[1], sys.argv[2]


class Garbage(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"\x02\x81" + bytes(range(58)), addr)  # type: ignore[attr-defined]
        self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]


class Ssdp(asyncio.DatagramProtocol):
    def __init__(self, http_port: int) -> None:
        self.http_port = http_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.startswith(b"M-SEARCH"):
            return
        answer = ("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
                  "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
                  "USN: uuid:00000000-0000-0000-0000-000000000001::urn:schemas-upnp-org:"
                  "device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: lab/1 UPnP/1.1 x/1\r\n"
                  f"LOCATION: http://{LAN_IP}:{self.http_port}/rootDesc.xml\r\n\r\n")
        self.transport.sendto(answer.encode(), addr)  # type: ignore[attr-defined]


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if MODE == "garbage":
        await reader.read(4096)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<root><<<\x00\xff")
        writer.close()
        return
    await asyncio.sleep(3600)  # dead: accepts, never answers


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(http, LAN_IP, 0)
    http_port = server.sockets[0].getsockname()[1]
    await loop.create_datagram_endpoint(Garbage, local_addr=(LAN_IP, 5351))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 1900))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    struct.pack("4s4s", socket.inet_aton("239.255.255.250"),
                                socket.inet_aton(LAN_IP)))
    await loop.create_datagram_endpoint(lambda: Ssdp(http_port), sock=sock)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
