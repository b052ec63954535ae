"""A CoAP server built with aiocoap (nobody here wrote it), for the UDP tests.

    python -m tests.integration.coapservice PORT

Resources: ``/thing`` (GET returns the value, PUT replaces it) and ``/clock``
(observable: a notification with a counter every 50 ms). Prints ``ready`` once
it is bound to 127.0.0.1:PORT.
"""

from __future__ import annotations

import asyncio
import sys

import aiocoap
import aiocoap.resource as resource


class Thing(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.value = b"initial"

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.value)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.value = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"stored " + self.value)


class Clock(resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        asyncio.get_running_loop().call_later(0.05, self.tick)

    def tick(self) -> None:
        self.ticks += 1
        self.updated_state()
        asyncio.get_running_loop().call_later(0.05, self.tick)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=str(self.ticks).encode())


async def main(port: int) -> None:
    root = resource.Site()
    root.add_resource(["thing"], Thing())
    root.add_resource(["clock"], Clock())
    await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
