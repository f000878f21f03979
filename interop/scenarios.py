#!/usr/bin/env python3
"""Interop scenarios: drive an XMPP server with slixmpp over real sockets.

Prints `PASS name` or `FAIL name: reason` per scenario, then a final
`N passed, M failed` line. Exits 0 only when every scenario passed.
See interop/README.md for how to run it.
"""
import argparse
import asyncio
import hashlib
import inspect
import logging
import shutil
import ssl
import sys
import uuid
import base64
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from slixmpp import JID, ClientXMPP, Presence
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0153 import VCardTempUpdate
from slixmpp.xmlstream import register_stanza_plugin

# Read presence['vcard_temp_update'] without loading the xep_0153 plugin, which
# would also stamp our own presence with a client-side hash.
register_stanza_plugin(Presence, VCardTempUpdate)


class Failed(Exception):
    pass


class NotReceived(Failed):
    pass


WAIT = 10  # seconds for any single expected reply, push, message or presence


async def until(cond, describe, timeout=WAIT):
    """Poll cond() (e.g. state slixmpp updates from roster pushes); on
    timeout fail with describe(), evaluated then."""
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise Failed(f"timed out after {timeout}s waiting for {describe()}")


class Client:
    """One slixmpp connection plus the state the scenarios check."""

    def __init__(self, args, local, resource=None, password=None, mech=None,
                 direct_tls=False, priority=None, plugins=()):
        self.args = args
        self.direct_tls = direct_tls
        self.priority = priority
        jid = f"{local}@{args.domain}" + (f"/{resource}" if resource else "")
        # use_mechs limits SASL to exactly this set; without it slixmpp
        # picks the "best" offered mechanism and falls back on failure.
        config = {"feature_mechanisms": {"use_mechs": [mech]}} if mech else {}
        self.restricted_mech = mech is not None
        x = self.xmpp = ClientXMPP(
            jid, args.password if password is None else password,
            plugin_config=config)
        for plugin in ("xep_0030", "xep_0054", "xep_0199", "xep_0203", *plugins):
            x.register_plugin(plugin)
        # slixmpp accepts and reciprocates every subscription request by
        # default; scenarios opt in to that (see befriend()).
        x.auto_authorize = None
        x.auto_subscribe = False
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
        self.carbons = asyncio.Queue()  # (direction, forwarded message)
        self.presences = asyncio.Queue()
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
        x.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(
            ("received", m["carbon_received"])))
        x.add_event_handler("carbon_sent", lambda m: self.carbons.put_nowait(
            ("sent", m["carbon_sent"])))
        x.add_event_handler("presence_available", self.presences.put_nowait)
        x.add_event_handler("presence_unavailable", self.presences.put_nowait)

    def _fail(self, reason):
        if not self.session.done():
            self.session.set_exception(Failed(reason))

    async def _on_session_start(self, _):
        # Like an ordinary client: roster first, then initial presence.
        try:
            await self.xmpp.get_roster(timeout=WAIT)
        except (IqError, IqTimeout) as e:
            return self._fail(f"roster get failed: {e}")
        self.xmpp.send_presence(ppriority=self.priority)
        if not self.session.done():
            self.session.set_result(None)

    def _on_failed_auth(self, failure):
        self.auth_failed = True
        # With one mechanism there is no fallback; otherwise slixmpp tries the next one
        # and only failed_all_auth is final.
        if self.restricted_mech:
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
        port = a.tls_port if self.direct_tls else a.port
        if "host" in inspect.signature(self.xmpp.connect).parameters:
            self.xmpp.connect(a.host, port)
        else:
            # slixmpp before 1.9 (Debian's 1.8.3) takes an address tuple.
            self.xmpp.connect((a.host, port), use_ssl=self.direct_tls)
        await self.session
        if not isinstance(self.xmpp.socket, (ssl.SSLSocket, ssl.SSLObject)):
            raise Failed("session is not TLS-encrypted")
        return self

    @property
    def jid(self):
        return self.xmpp.boundjid

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

    async def _next(self, queue, match, what, timeout):
        """The first queued stanza for which match() is true."""
        async def scan():
            while True:
                stanza = await queue.get()
                if match(stanza):
                    return stanza
        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise NotReceived(f"{self.jid} got no {what} within {timeout:g}s")

    async def expect(self, body, timeout=WAIT):
        """Wait for a message with this body, skipping unrelated ones."""
        def match(msg):
            if msg["type"] == "error":
                raise Failed(f"error message from {msg['from']}: "
                             f"{msg['error']['condition']}")
            return msg["body"] == body
        return await self._next(self.inbox, match, f"message {body!r}", timeout)

    async def expect_presence(self, who, ptype="available", where=None,
                              what=None):
        """Wait for presence of this type from `who` (a full JID, or a bare
        JID for any of its resources) that also satisfies where()."""
        def match(p):
            sender = p["from"] if who.resource else p["from"].bare
            return (p["type"] == ptype and sender == who
                    and (where is None or where(p)))
        what = what or f"{ptype} presence from {who}"
        return await self._next(self.presences, match, what, WAIT)

    async def sync(self):
        """A ping round trip, so the server has handled all we sent before."""
        await self.xmpp.plugin["xep_0199"].send_ping(self.args.domain, timeout=WAIT)

    async def server_roster(self):
        """The roster as stored on the server (full fetch, no versioning)."""
        iq = self.xmpp.Iq(stype="get")
        iq.enable("roster")
        return (await iq.send(timeout=WAIT))["roster"]["items"]

    async def clear_roster(self):
        for jid in await self.server_roster():
            await self.xmpp.del_roster_item(jid)
        left = await self.server_roster()
        if left:
            raise Failed(f"{self.jid}: roster items left after removal: {list(left)}")

    def subscription(self, contact):
        """slixmpp's view (from roster pushes) of our subscription to contact."""
        item = self.xmpp.client_roster[contact.bare]
        return item["subscription"] + (" + ask" if item["pending_out"] else "")


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
    # So the server has processed bob's initial presence before alice's
    # message to his bare JID arrives.
    await bob.sync()

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


# IM basics (RFC 6121, vCard, disco) between two ordinary clients. Scenarios
# that touch rosters empty both rosters first (in case an earlier failed run
# left items behind) and again at the end.

async def online_pair(h, tag):
    """alice and bob logged in (roster fetched, initial presence sent)."""
    alice = await h.client(h.args.user, f"{tag}-a").login()
    bob = await h.client(h.args.user2, f"{tag}-b").login()
    return alice, bob


async def clear_rosters(*clients):
    for c in clients:
        await c.clear_roster()


async def befriend(a, b):
    """Mutual subscription as slixmpp bots do it: a asks; b's client
    auto-authorizes and asks back; a's client auto-authorizes that."""
    b.xmpp.auto_authorize = True
    b.xmpp.auto_subscribe = True
    a.xmpp.auto_authorize = True
    a.xmpp.send_presence_subscription(b.jid.bare)
    for x, y in ((a, b), (b, a)):
        await until(lambda: x.subscription(y.jid) == "both",
                    lambda: f"{x.jid.bare}'s roster to show 'both' for "
                            f"{y.jid.bare} (now {x.subscription(y.jid)!r})")


async def subscription_handshake(h):
    alice, bob = await online_pair(h, "sub")
    await clear_rosters(alice, bob)
    await befriend(alice, bob)
    for x, y in ((alice, bob), (bob, alice)):
        stored = (await x.server_roster()).get(y.jid.bare)
        if stored is None or stored["subscription"] != "both":
            raise Failed(f"{x.jid.bare}'s roster on the server has {y.jid.bare} as "
                         f"{stored and stored['subscription']!r}, want 'both'")
        await x.expect_presence(y.jid)
    await clear_rosters(alice, bob)
    await alice.close()
    await bob.close()


async def presence_offline_and_back(h):
    alice, bob = await online_pair(h, "away")
    await clear_rosters(alice, bob)
    await befriend(alice, bob)
    await alice.expect_presence(bob.jid)
    await bob.close()
    await alice.expect_presence(bob.jid, "unavailable")
    bob = await h.client(h.args.user2, "away-b").login()
    await alice.expect_presence(bob.jid)
    await clear_rosters(alice, bob)
    await alice.close()
    await bob.close()


async def offline_message(h):
    alice = await h.client(h.args.user, "offline-a").login()
    body = f"while you were out {uuid.uuid4()}"
    sent = datetime.now(timezone.utc)
    alice.xmpp.send_message(mto=f"{h.args.user2}@{h.args.domain}", mbody=body,
                            mtype="chat")
    await alice.sync()  # stored before bob comes online
    bob = await h.client(h.args.user2, "offline-b").login()
    msg = await bob.expect(body)
    if msg["from"] != alice.jid:
        raise Failed(f"bob got from={msg['from']}, want {alice.jid}")
    stamp = msg["delay"]["stamp"]  # XEP-0203, parsed by slixmpp's xep_0203
    if stamp is None:
        raise Failed(f"offline message has no XEP-0203 delay: {msg}")
    slack = timedelta(seconds=2)  # stamps may have whole-second precision
    if not sent - slack <= stamp <= datetime.now(timezone.utc) + slack:
        raise Failed(f"delay stamp {stamp} is not the time it was sent ({sent})")
    await alice.close()
    await bob.close()


async def vcard_round_trip(h):
    alice, bob = await online_pair(h, "vcard")
    vcards = alice.xmpp.plugin["xep_0054"]
    name = f"Alice {uuid.uuid4()}"
    photo = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes  # new avatar each run
    vcard = vcards.make_vcard()
    vcard["FN"] = name
    vcard["PHOTO"]["TYPE"] = "image/png"
    vcard["PHOTO"]["BINVAL"] = photo
    await vcards.publish_vcard(vcard, timeout=WAIT)

    got = (await bob.xmpp.plugin["xep_0054"].get_vcard(
        alice.jid.bare, timeout=WAIT))["vcard_temp"]
    if got["FN"] != name:
        raise Failed(f"bob read FN={got['FN']!r}, want {name!r}")
    if got["PHOTO"]["BINVAL"] != photo:
        raise Failed("bob read a different PHOTO than alice published")

    # XEP-0153 avatar hash, put by the server (XEP-0398 §5) into presence
    # that has none: alice's client does not stamp it itself. Her presence is
    # reflected to her (RFC 6121 §4.2.2), so she sees it without a contact.
    want = hashlib.sha1(photo).hexdigest()
    alice.xmpp.send_presence()
    await alice.expect_presence(
        alice.jid, where=lambda p: p["vcard_temp_update"]["photo"] == want,
        what=f"own presence with avatar hash {want}")
    await alice.close()
    await bob.close()


async def disco_info_server(h):
    c = await h.client(h.args.user, "disco").login()
    iq = await c.xmpp.plugin["xep_0030"].get_info(jid=h.args.domain, timeout=WAIT)
    info = iq["disco_info"]
    missing = {"urn:xmpp:ping", "vcard-temp"} - set(info["features"])
    if missing:
        raise Failed(f"features {sorted(missing)} missing from {info['features']}")
    if not any(i[:2] == ("server", "im") for i in info["identities"]):
        raise Failed(f"no server/im identity in {info['identities']}")
    await c.close()


async def message_priority(h):
    alice = await h.client(h.args.user, "prio-a").login()
    high = await h.client(h.args.user2, "prio-5", priority=5).login()
    low = await h.client(h.args.user2, "prio-1", priority=1).login()
    await high.sync()
    await low.sync()
    body = f"to the bare JID {uuid.uuid4()}"
    alice.xmpp.send_message(mto=high.jid.bare, mbody=body, mtype="chat")
    await high.expect(body)
    try:
        await low.expect(body, timeout=1)
    except NotReceived:
        pass
    else:
        raise Failed("the priority-1 resource got the message as well")
    for c in (alice, high, low):
        await c.close()


async def message_carbons(h):
    """XEP-0280 with slixmpp's plugin: the enabled resource sees what the
    other resource of the account receives and sends."""
    watcher = await h.client(h.args.user, "carbons-1", plugins=("xep_0280",)).login()
    other = await h.client(h.args.user, "carbons-2").login()
    bob = await h.client(h.args.user2, "carbons-b").login()
    await watcher.xmpp.plugin["xep_0280"].enable(timeout=WAIT)
    for direction, sender, to in (("received", bob, other.jid),
                                  ("sent", other, bob.jid)):
        body = f"{direction} {uuid.uuid4()}"
        sender.xmpp.send_message(mto=to, mbody=body, mtype="chat")
        got = await watcher._next(
            watcher.carbons, lambda c: c[0] == direction and c[1]["body"] == body,
            f"{direction} carbon of {body!r}", WAIT)
        if got[1]["to"] != to:
            raise Failed(f"{direction} carbon to={got[1]['to']}, want {to}")
    for c in (watcher, other, bob):
        await c.close()


async def default_mechanism_login(h):
    """Like a client that lets slixmpp choose (poezio does): whatever it tries
    first (with Debian's slixmpp 1.8.3: -PLUS with tls-unique, which TLS 1.3
    lacks), the first connection must end logged in."""
    c = await h.client(h.args.user, "default-mech").login()
    if not c.mech:
        raise Failed("no mechanism recorded")
    await c.close()


async def go_sendxmpp(h):
    """go-sendxmpp (Debian) sends whitespace after </auth>; it must log in and
    deliver a message."""
    exe = shutil.which("go-sendxmpp")
    if exe is None:
        raise Failed("go-sendxmpp is not installed (interop/setup.sh installs it as root)")
    bob = await h.client(h.args.user2, "sendxmpp-b").login()
    await bob.sync()
    body = f"from go-sendxmpp {uuid.uuid4()}"
    a = h.args
    proc = await asyncio.create_subprocess_exec(
        exe, "-n", "-j", f"{a.host}:{a.port}", "-u", f"{a.user}@{a.domain}",
        "-p", a.password, str(bob.jid),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(body.encode() + b"\n"), WAIT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise Failed("go-sendxmpp did not finish")
    if proc.returncode != 0:
        raise Failed(f"go-sendxmpp exited {proc.returncode}: {out.decode(errors='replace').strip()}")
    await bob.expect(body)
    await bob.close()


# ------------------------------------------------------- XEP-0045 (MUC)

class Room:
    """One MUC room as slixmpp's xep_0045 plugin sees it, for one client:
    the presences and self-presences it received from the room."""

    def __init__(self, client, jid):
        self.client = client
        self.jid = jid
        self.muc = client.xmpp.plugin["xep_0045"]
        self.presences = asyncio.Queue()
        self.own = asyncio.Queue()
        client.xmpp.add_event_handler(f"muc::{jid}::presence", self.presences.put_nowait)
        client.xmpp.add_event_handler(f"muc::{jid}::self-presence", self.own.put_nowait)

    async def join(self, nick):
        """Joins; returns (self-presence, occupants' nicks) as join_muc_wait does."""
        pres, _subject, occupants, _history = await self.muc.join_muc_wait(
            self.jid, nick, maxstanzas=0, timeout=WAIT)
        return pres, [o["from"].resource for o in occupants]

    async def presence(self, queue, match, what):
        return await self.client._next(queue, match, what, WAIT)


async def muc_room(h, tag):
    """Alice creates an instant room (201, then an empty submitted form,
    XEP-0045 §10.1.2) and bob joins it; returns both views of the room."""
    alice = await h.client(h.args.user, f"{tag}-a", plugins=("xep_0045",)).login()
    bob = await h.client(h.args.user2, f"{tag}-b", plugins=("xep_0045",)).login()
    jid = JID(f"{tag}-{uuid.uuid4().hex[:8]}@conference.{h.args.domain}")
    ra, rb = Room(alice, jid), Room(bob, jid)
    own, _ = await ra.join("alice")
    if 201 not in own["muc"]["status_codes"]:
        raise Failed(f"creating {jid}: no status 201 in {own}")
    form = alice.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    await ra.muc.set_room_config(jid, form, timeout=WAIT)
    own, occupants = await rb.join("bob")
    if "alice" not in occupants or own["muc"]["role"] != "participant":
        raise Failed(f"bob joined with role {own['muc']['role']}, occupants {occupants}")
    await ra.presence(ra.presences, lambda p: p["from"].resource == "bob",
                      "bob's presence in the room")
    return ra, rb


async def muc_join_talk_nick(h):
    """Join, a groupchat message reflected to both with its id and bob's
    occupant JID, then a nick change (303) that alice sees."""
    ra, rb = await muc_room(h, "muc-talk")
    body = f"hello room {uuid.uuid4()}"
    msg = rb.client.xmpp.make_message(mto=ra.jid, mbody=body, mtype="groupchat")
    msg["id"] = mid = uuid.uuid4().hex
    msg.send()
    for c in (ra.client, rb.client):
        got = await c.expect(body)
        if got["id"] != mid or got["from"] != JID(f"{ra.jid}/bob"):
            raise Failed(f"reflected as id={got['id']} from={got['from']}")
    new = await rb.muc.set_self_nick(ra.jid, "robert", timeout=WAIT)
    if new != "robert":
        raise Failed(f"nick change gave {new!r}")
    await ra.presence(ra.presences, lambda p: p["from"].resource == "robert"
                      and p["type"] != "unavailable", "robert's presence")
    if "robert" not in ra.muc.get_roster(ra.jid):
        raise Failed(f"alice's occupant list: {ra.muc.get_roster(ra.jid)}")
    for c in (ra.client, rb.client):
        await c.close()


async def muc_kick(h):
    """The owner kicks bob with a reason: bob gets unavailable with 307 and
    110, alice sees him go."""
    ra, rb = await muc_room(h, "muc-kick")
    await ra.muc.set_role(ra.jid, "bob", "none", reason="interop", timeout=WAIT)
    own = await rb.presence(rb.own, lambda p: p["type"] == "unavailable",
                            "bob's unavailable self-presence")
    if not {307, 110} <= set(own["muc"]["status_codes"]):
        raise Failed(f"kick status codes {own['muc']['status_codes']}")
    await ra.presence(ra.presences, lambda p: p["from"].resource == "bob"
                      and p["type"] == "unavailable", "bob leaving")
    if ra.muc.get_roster(ra.jid) != ["alice"]:
        raise Failed(f"alice's occupant list: {ra.muc.get_roster(ra.jid)}")
    for c in (ra.client, rb.client):
        await c.close()

# ---------------------------------------------------------------- pubsub

PEP_PLUGINS = ("xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0172")
NICK_NS = "http://jabber.org/protocol/nick"
AVATAR_DATA_NS = "urn:xmpp:avatar:data"
AVATAR_METADATA_NS = "urn:xmpp:avatar:metadata"


def event_payload(msg, tag):
    """The payload element `tag` ({ns}name) of a pubsub notification's item."""
    item = msg["pubsub_event"]["items"]["item"]
    return item.xml.find(tag)


def queue_of(client, event):
    q = asyncio.Queue()
    client.xmpp.add_event_handler(event, q.put_nowait)
    return q


async def pep_avatar_and_nick(h):
    """XEP-0163/0084/0172 with slixmpp's plugins: the server learns Bob's
    caps (+notify for nick and avatar metadata) by asking his client, sends
    him Alice's last items once they are contacts, then each new publish;
    the avatar data is fetched by id."""
    alice = await h.client(h.args.user, "pep-a", plugins=PEP_PLUGINS).login()
    bob = await h.client(h.args.user2, "pep-b", plugins=PEP_PLUGINS).login()
    await clear_rosters(alice, bob)
    nicks = queue_of(bob, "user_nick_publish")
    metadata = queue_of(bob, "avatar_metadata_publish")
    photo = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    avatar_id = hashlib.sha1(photo).hexdigest()
    avatars = alice.xmpp.plugin["xep_0084"]
    await avatars.publish_avatar(photo, timeout=WAIT)
    await avatars.publish_avatar_metadata(
        [{"id": avatar_id, "type": "image/png", "bytes": len(photo)}], timeout=WAIT)
    nick = f"Alice {uuid.uuid4()}"
    await alice.xmpp.plugin["xep_0172"].publish_nick(nick, timeout=WAIT)

    await befriend(alice, bob)

    def nick_is(want):
        def match(msg):
            el = event_payload(msg, f"{{{NICK_NS}}}nick")
            return el is not None and el.text == want
        return match

    def info_id(msg):
        el = event_payload(msg, f"{{{AVATAR_METADATA_NS}}}metadata")
        info = None if el is None else el.find(f"{{{AVATAR_METADATA_NS}}}info")
        return None if info is None else info.get("id")

    await bob._next(nicks, nick_is(nick), f"alice's last nick {nick!r}", WAIT)
    await bob._next(metadata, lambda m: info_id(m) == avatar_id,
                    f"alice's avatar metadata {avatar_id}", WAIT)
    iq = await bob.xmpp.plugin["xep_0084"].retrieve_avatar(
        alice.jid.bare, avatar_id, timeout=WAIT)
    data = iq["pubsub"]["items"]["item"].xml.find(f"{{{AVATAR_DATA_NS}}}data")
    if data is None or base64.b64decode(data.text) != photo:
        raise Failed("bob fetched different avatar data than alice published")

    nick = f"Alice {uuid.uuid4()}"
    await alice.xmpp.plugin["xep_0172"].publish_nick(nick, timeout=WAIT)
    await bob._next(nicks, nick_is(nick), f"alice's new nick {nick!r}", WAIT)
    for c in (alice, bob):
        await c.close()


async def pubsub_service(h):
    """XEP-0060 with slixmpp's plugin at pubsub.DOMAIN: listed in the
    domain's disco#items; create, subscribe, publish and notify, items,
    unsubscribe, delete."""
    alice = await h.client(h.args.user, "ps-a", plugins=("xep_0060",)).login()
    bob = await h.client(h.args.user2, "ps-b", plugins=("xep_0060",)).login()
    service = f"pubsub.{h.args.domain}"
    items = await bob.xmpp.plugin["xep_0030"].get_items(jid=h.args.domain, timeout=WAIT)
    jids = [i[0] for i in items["disco_items"]["items"]]
    if service not in jids:
        raise Failed(f"{service} missing from the domain's disco#items {jids}")
    node = f"interop-{uuid.uuid4()}"
    ps_a, ps_b = alice.xmpp.plugin["xep_0060"], bob.xmpp.plugin["xep_0060"]
    await ps_a.create_node(service, node, timeout=WAIT)
    await ps_b.subscribe(service, node, timeout=WAIT)
    published = queue_of(bob, "pubsub_publish")
    text = str(uuid.uuid4())
    entry = ET.Element("{urn:xmppd:interop}entry")
    entry.text = text

    def has_entry(msg):
        el = event_payload(msg, "{urn:xmppd:interop}entry")
        return msg["pubsub_event"]["items"]["node"] == node and el is not None \
            and el.text == text

    await ps_a.publish(service, node, id="one", payload=entry, timeout=WAIT)
    await bob._next(published, has_entry, f"the notification of {text}", WAIT)
    got = await ps_b.get_items(service, node, timeout=WAIT)
    ids = [i["id"] for i in got["pubsub"]["items"]]
    if ids != ["one"]:
        raise Failed(f"items of {node}: {ids}, want ['one']")
    await ps_b.unsubscribe(service, node, timeout=WAIT)
    await ps_a.delete_node(service, node, timeout=WAIT)
    try:
        await ps_b.get_items(service, node, timeout=WAIT)
    except IqError as e:
        if e.condition != "item-not-found":
            raise Failed(f"deleted node: {e.condition}, want item-not-found")
    else:
        raise Failed("the deleted node still answers")
    for c in (alice, bob):
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
    ("subscription_handshake", subscription_handshake),
    ("presence_offline_and_back", presence_offline_and_back),
    ("offline_message", offline_message),
    ("vcard_round_trip", vcard_round_trip),
    ("disco_info_server", disco_info_server),
    ("message_priority", message_priority),
    ("message_carbons", message_carbons),
    ("default_mechanism_login", default_mechanism_login),
    ("go_sendxmpp", go_sendxmpp),
    ("muc_join_talk_nick", muc_join_talk_nick),
    ("muc_kick", muc_kick),
    ("pep_avatar_and_nick", pep_avatar_and_nick),
    ("pubsub_service", pubsub_service),
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
