#!/usr/bin/env python3
"""An XEP-0114 component written with slixmpp's ComponentXMPP against xmppd: it connects
with its secret, a user's message to it arrives, its answer reaches the user, and a wrong
secret is refused. Exits non-zero on failure."""
import argparse
import asyncio
import logging
import ssl
import sys
import uuid

from slixmpp import ClientXMPP
from slixmpp.componentxmpp import ComponentXMPP

WAIT = 20


class Echo(ComponentXMPP):
    def __init__(self, domain, secret, host, port):
        super().__init__(domain, secret, host, port)
        self.ready = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.ready.set_result(True))
        self.add_event_handler("message", self.echo)

    def echo(self, msg):
        self.send_message(mto=msg["from"], mfrom=msg["to"], mbody=f"echo: {msg['body']}",
                          mtype=msg["type"])


async def main(args):
    refused = ComponentXMPP(args.component, args.secret + "-wrong", args.host, args.port)
    failed = asyncio.get_running_loop().create_future()
    refused.add_event_handler("stream_error", lambda e: failed.done() or failed.set_result(e))
    refused.add_event_handler("disconnected", lambda _: failed.done() or failed.set_result(None))
    refused.connect()
    error = await asyncio.wait_for(failed, WAIT)
    if error is not None and error["condition"] != "not-authorized":
        raise AssertionError(f"wrong secret got {error['condition']}")
    print("PASS wrong secret refused")

    echo = Echo(args.component, args.secret, args.host, args.port)
    echo.connect()
    await asyncio.wait_for(echo.ready, WAIT)
    print("PASS component handshake")

    user = ClientXMPP(args.user, args.password)
    user.ssl_context = ssl.create_default_context(cafile=args.cafile)
    started = asyncio.get_running_loop().create_future()
    user.add_event_handler("session_start", lambda _: started.set_result(True))
    replies = asyncio.Queue()
    user.add_event_handler("message", replies.put_nowait)
    user.connect(host=args.host, port=args.c2s_port)
    await asyncio.wait_for(started, WAIT)
    body = f"ping {uuid.uuid4()}"
    user.send_message(mto=f"bot@{args.component}", mbody=body, mtype="chat")
    while True:
        msg = await asyncio.wait_for(replies.get(), WAIT)
        if msg["body"] == f"echo: {body}":
            break
    assert msg["from"] == f"bot@{args.component}", msg["from"]
    print("PASS message to the component and its answer")
    user.disconnect()
    echo.disconnect()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ["component", "secret", "host", "user", "password", "cafile"]:
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--c2s-port", type=int, required=True)
    p.add_argument("-v", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.v else logging.CRITICAL)
    try:
        asyncio.run(main(args))
    except Exception as e:
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
