#!/usr/bin/env python3
"""Federation with a peer server: alice@one.test on xmppd and bob@two.test on the peer
(Prosody), both driven with slixmpp over real sockets. Checks chat both ways, the
subscription handshake ending in `both` on both rosters, presence across the link, and a
ping to the remote server. Exits non-zero on the first failure."""
import argparse
import asyncio
import logging
import ssl
import sys
import uuid

from slixmpp import ClientXMPP

WAIT = 20


class Account:
    def __init__(self, jid, password, host, port, cafile):
        self.xmpp = ClientXMPP(jid, password)
        self.xmpp.ssl_context = ssl.create_default_context(cafile=cafile)
        self.xmpp.register_plugin("xep_0199")
        self.host, self.port = host, port
        self.messages = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.xmpp.add_event_handler("message", self.messages.put_nowait)
        self.xmpp.add_event_handler("presence_available", self.presences.put_nowait)
        self.xmpp.add_event_handler("presence_subscribe", self.on_subscribe)

    def on_subscribe(self, presence):
        self.xmpp.send_presence(pto=presence["from"].bare, ptype="subscribed")
        self.xmpp.send_presence(pto=presence["from"].bare, ptype="subscribe")

    async def start(self):
        started = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler("session_start", lambda _: started.set_result(True))
        self.xmpp.add_event_handler("failed_auth", lambda _: started.set_exception(
            RuntimeError(f"{self.xmpp.boundjid} could not log in")))
        self.xmpp.connect(host=self.host, port=self.port)
        await asyncio.wait_for(started, WAIT)
        self.xmpp.send_presence()
        await self.xmpp.get_roster()

    async def expect_message(self, body):
        while True:
            msg = await asyncio.wait_for(self.messages.get(), WAIT)
            if msg["body"] == body:
                return msg


def subscription(account, contact):
    return account.xmpp.client_roster[contact]["subscription"]


async def main(args):
    alice = Account(f"alice@{args.local}", args.password, args.local_host, args.local_port, args.cafile)
    bob = Account(f"bob@{args.remote}", args.password, args.remote_host, args.remote_port, args.cafile)
    await alice.start()
    await bob.start()

    body = f"to the peer {uuid.uuid4()}"
    alice.xmpp.send_message(mto=f"bob@{args.remote}", mbody=body, mtype="chat")
    msg = await bob.expect_message(body)
    assert msg["from"].bare == f"alice@{args.local}", msg["from"]
    reply = f"back {uuid.uuid4()}"
    bob.xmpp.send_message(mto=msg["from"], mbody=reply, mtype="chat")
    msg = await alice.expect_message(reply)
    assert msg["from"].bare == f"bob@{args.remote}", msg["from"]
    print("PASS chat both ways")

    alice.xmpp.send_presence(pto=f"bob@{args.remote}", ptype="subscribe")
    for _ in range(WAIT * 10):
        if (subscription(alice, f"bob@{args.remote}") == "both"
                and subscription(bob, f"alice@{args.local}") == "both"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(
            f"subscriptions: alice sees {subscription(alice, f'bob@{args.remote}')}, "
            f"bob sees {subscription(bob, f'alice@{args.local}')}")
    print("PASS subscription handshake ends in both")

    bob.xmpp.send_presence(pstatus="across")
    while True:
        p = await asyncio.wait_for(alice.presences.get(), WAIT)
        if p["from"].bare == f"bob@{args.remote}" and p["status"] == "across":
            break
    print("PASS presence across the link")

    rtt = await alice.xmpp.plugin["xep_0199"].send_ping(args.remote, timeout=WAIT)
    assert rtt is not None
    print("PASS ping to the remote server")
    alice.xmpp.disconnect()
    bob.xmpp.disconnect()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ["local", "local-host", "remote", "remote-host", "password", "cafile"]:
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--local-port", type=int, required=True)
    p.add_argument("--remote-port", type=int, required=True)
    p.add_argument("-v", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.v else logging.ERROR)
    try:
        asyncio.run(main(args))
    except Exception as e:  # report, do not trace
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
