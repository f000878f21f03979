#!/usr/bin/env python3
"""Interop scenarios: drive an XMPP server with slixmpp over real sockets.

Prints `PASS name` or `FAIL name: reason` per scenario, then a final
`N passed, M failed` line. Exits 0 only when every scenario passed.
See interop/README.md for how to run it.
"""
import argparse
import asyncio
import logging
import ssl
import sys
import uuid

from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout


class Failed(Exception):
    pass


class Client:
    """One slixmpp connection plus the state the scenarios check."""

    def __init__(self, args, local, resource=None, password=None, mech=None,
                 direct_tls=False):
        self.args = args
        self.direct_tls = direct_tls
        jid = f"{local}@{args.domain}" + (f"/{resource}" if resource else "")
        # use_mechs limits SASL to exactly this set; without it slixmpp
        # picks the "best" offered mechanism and falls back on failure.
        config = {"feature_mechanisms": {"use_mechs": [mech]}} if mech else {}
        x = self.xmpp = ClientXMPP(
            jid, args.password if password is None else password,
            plugin_config=config)
        x.register_plugin("xep_0199")
        x.ssl_context = make_ssl_context(args)
        # With an explicit host/port slixmpp tries direct TLS first, then
        # STARTTLS, on the same port: allow only the one we are testing.
        x.enable_direct_tls = direct_tls
        x.enable_starttls = not direct_tls
        x.enable_plaintext = False

        loop = asyncio.get_running_loop()
        self.session = loop.create_future()   # done at session_start
        self.closed = loop.create_future()    # disconnect reason
        self.auth_failed = False
        self.inbox = asyncio.Queue()
        x.add_event_handler("session_start", self._on_session_start)
        x.add_event_handler("failed_auth", self._on_failed_auth)
        x.add_event_handler("failed_all_auth", self._on_failed_all_auth)
        x.add_event_handler("connection_failed",
                            lambda e: self._fail(f"connection failed: {e}"))
        x.add_event_handler("ssl_invalid_chain",
                            lambda e: self._fail(f"TLS verification failed: {e}"))
        x.add_event_handler("stream_error",
                            lambda e: self._fail(f"stream error: {e['condition']}"))
        x.add_event_handler("disconnected", self._on_disconnected)
        x.add_event_handler("message", self.inbox.put_nowait)

    def _fail(self, reason):
        if not self.session.done():
            self.session.set_exception(Failed(reason))

    def _on_session_start(self, _):
        self.xmpp.send_presence()
        if not self.session.done():
            self.session.set_result(None)

    def _on_failed_auth(self, failure):
        self.auth_failed = True
        self._fail(f"SASL failure: {failure['condition']}")

    def _on_failed_all_auth(self, _):
        offered = sorted(self.xmpp.plugin["feature_mechanisms"].mech_list)
        self._fail(f"no usable SASL mechanism; server offered {offered}")

    def _on_disconnected(self, reason):
        self._fail(f"disconnected before session: {reason}")
        if not self.closed.done():
            self.closed.set_result(reason)

    async def login(self):
        a = self.args
        self.xmpp.connect(a.host, a.tls_port if self.direct_tls else a.port)
        await self.session
        if not isinstance(self.xmpp.socket, (ssl.SSLSocket, ssl.SSLObject)):
            raise Failed("session is not TLS-encrypted")
        return self

    @property
    def mech(self):
        m = self.xmpp.plugin["feature_mechanisms"].mech
        return m.name if m else None

    async def close(self):
        """Send </stream:stream> and require the server to close its stream."""
        await self.xmpp.disconnect(wait=5)
        reason = await asyncio.wait_for(asyncio.shield(self.closed), 5)
        # slixmpp reports exactly this reason when it read the server's
        # closing </stream:stream>; otherwise we timed out and aborted.
        if reason != "End of stream":
            raise Failed(f"server did not close the stream (reason: {reason})")

    def abort(self):
        self.xmpp.cancel_connection_attempt()  # stops slixmpp's retry loop
        self.xmpp.abort()

    async def expect(self, body):
        """Wait for a message with this body, skipping unrelated ones."""
        while True:  # bounded by the per-scenario timeout
            msg = await self.inbox.get()
            if msg["type"] == "error":
                raise Failed(f"error message from {msg['from']}: "
                             f"{msg['error']['condition']}")
            if msg["body"] == body:
                return msg


def make_ssl_context(args):
    if args.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    # cafile=None means the system trust store; hostname must match --domain.
    return ssl.create_default_context(cafile=args.cafile)


# ---------------------------------------------------------------- scenarios

def login_with(mech):
    async def scenario(h):
        c = await h.client(h.args.user, "interop", mech=mech).login()
        if c.mech != mech:
            raise Failed(f"authenticated with {c.mech}, expected {mech}")
        if "starttls" not in c.xmpp.features:
            raise Failed("STARTTLS was not negotiated")
        await c.close()
    return scenario


async def direct_tls_login(h):
    c = await h.client(h.args.user, "interop-tls", direct_tls=True).login()
    if "starttls" in c.xmpp.features:
        raise Failed("STARTTLS negotiated on the direct TLS port")
    await c.close()


async def wrong_password(h):
    c = h.client(h.args.user, "interop", password=h.args.password + "-wrong")
    try:
        await c.login()
    except Failed as e:
        if not c.auth_failed:
            raise Failed(f"expected a SASL failure, got: {e}")
    else:
        raise Failed("login with a wrong password succeeded")


async def chat_message(h):
    alice = await h.client(h.args.user, "interop-a").login()
    bob = await h.client(h.args.user2, "interop-b").login()
    # Round trip on bob's stream, so the server has processed bob's initial
    # presence before alice's message to his bare JID arrives.
    await bob.xmpp.plugin["xep_0199"].send_ping(h.args.domain, timeout=10)

    body = f"hello {uuid.uuid4()}"
    alice.xmpp.send_message(mto=bob.xmpp.boundjid.bare, mbody=body, mtype="chat")
    msg = await bob.expect(body)
    if msg["from"] != alice.xmpp.boundjid:
        raise Failed(f"bob got from={msg['from']}, want {alice.xmpp.boundjid}")

    reply = f"reply {uuid.uuid4()}"
    bob.xmpp.send_message(mto=msg["from"], mbody=reply, mtype="chat")
    msg = await alice.expect(reply)
    if msg["from"] != bob.xmpp.boundjid:
        raise Failed(f"alice got from={msg['from']}, want {bob.xmpp.boundjid}")
    await alice.close()
    await bob.close()


async def server_resource(h):
    c = await h.client(h.args.user).login()  # bare JID: server picks resource
    if not c.xmpp.boundjid.resource:
        raise Failed(f"bound JID {c.xmpp.boundjid} has no resource")
    await c.close()


async def ping_server(h):
    c = await h.client(h.args.user, "interop-ping").login()
    # Not xep_0199.ping(): it counts an error reply from our own server as success.
    try:
        iq = await c.xmpp.plugin["xep_0199"].send_ping(h.args.domain, timeout=10)
    except IqError as e:
        raise Failed(f"ping got error {e.iq['error']['condition']}")
    except IqTimeout:
        raise Failed("ping timed out")
    if iq["type"] != "result":
        raise Failed(f"ping got type={iq['type']}")
    await c.close()


SCENARIOS = [
    ("starttls_scram_sha_256", login_with("SCRAM-SHA-256")),
    ("starttls_scram_sha_1", login_with("SCRAM-SHA-1")),
    ("starttls_plain", login_with("PLAIN")),
    ("direct_tls", direct_tls_login),
    ("wrong_password", wrong_password),
    ("chat_message", chat_message),
    ("server_resource", server_resource),
    ("ping_server", ping_server),
]


# ---------------------------------------------------------------- runner

class Harness:
    def __init__(self, args):
        self.args = args
        self.clients = []

    def client(self, *a, **kw):
        c = Client(self.args, *a, **kw)
        self.clients.append(c)
        return c

    def cleanup(self):
        for c in self.clients:
            c.abort()
        self.clients.clear()


async def run_all(args):
    passed = failed = 0
    for name, scenario in SCENARIOS:
        if args.only and name not in args.only:
            continue
        h = Harness(args)
        reason = None
        try:
            await asyncio.wait_for(scenario(h), args.timeout)
        except Failed as e:
            reason = str(e)
        except asyncio.TimeoutError:
            reason = f"timed out after {args.timeout:g}s"
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
        finally:
            h.cleanup()
            await asyncio.sleep(0.1)  # let aborted transports close
        if reason is None:
            passed += 1
            print(f"PASS {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {reason}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return failed == 0 and passed > 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5222, help="STARTTLS c2s port")
    p.add_argument("--tls-port", type=int, default=5223, help="direct TLS c2s port")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user", default="alice")
    p.add_argument("--user2", default="bob")
    p.add_argument("--password", default="secret", help="password of both users")
    cert = p.add_mutually_exclusive_group()
    cert.add_argument("--cafile", help="PEM file to verify the server certificate")
    cert.add_argument("--insecure", action="store_true",
                      help="do not verify the server certificate")
    p.add_argument("--timeout", type=float, default=20, help="seconds per scenario")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this scenario (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="slixmpp debug log")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s")
    sys.exit(0 if asyncio.run(run_all(args)) else 1)


if __name__ == "__main__":
    main()
