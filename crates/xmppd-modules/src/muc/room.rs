//! One room of XEP-0045 as a state machine without I/O: a stanza in, the stanzas to send
//! and the changes to store out. The room's task (`actor.rs`) does the routing and storage,
//! so everything here is tested without a server.

use std::collections::{HashMap, VecDeque};

use xmppd_core::{BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition};

use super::config::{self, AllowPm, RoomConfig, Whois};
use super::nick;
use crate::forms::{Form, FormKind};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_PING: &str = "urn:xmpp:ping";
const NS_CLIENT: &str = "jabber:client";
const NS_REGISTER: &str = "jabber:iq:register";
const NS_REGISTER_FORM: &str = "http://jabber.org/protocol/muc#register";
const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";
/// Iqs forwarded to occupants whose answers the room waits for; the oldest is forgotten.
const MAX_FORWARDS: usize = 256;
/// Affiliations one room keeps: anyone may register a nick (§7.10), so the list is capped.
const MAX_AFFILIATIONS: usize = 10_000;

type Cond = StanzaErrorCondition;

/// §5.2, ordered by privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// §5.1, ordered by privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// What the service allows every room (from `[modules.muc]`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_occupants: usize,
    pub max_history: usize,
    pub max_nick_chars: usize,
    /// Groupchat and private messages per second per occupant (a burst of twice that).
    pub messages_per_second: f64,
    /// Mixed into occupant ids (XEP-0421) so they cannot be computed from a JID; the
    /// server's persistent secret, so they stay the same across restarts.
    pub secret: std::sync::Arc<[u8]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliationEntry {
    pub affiliation: Affiliation,
    pub nick: Option<String>,
    pub reason: Option<String>,
}

/// What the room's task must store after a stanza.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Configuration or subject.
    Room,
    /// The affiliation of this bare JID (read it back with [`Room::affiliation_entry`]).
    Affiliation(String),
    History(i64, Element),
    Destroyed,
}

#[derive(Debug)]
pub struct Fanned {
    /// Sent after the first `before` elements of [`Outcome::out`].
    pub before: usize,
    pub stanza: Element,
    /// The full JIDs it goes to.
    pub to: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Stanzas to route, `from` and `to` set.
    pub out: Vec<Element>,
    /// Stanzas for many sessions (without `to`, which the task splices into the bytes it
    /// serialised once), each with its place among `out`.
    pub fanned: Vec<Fanned>,
    pub changes: Vec<Change>,
}

#[derive(Clone)]
struct Occupant {
    nick: String,
    bare: BareJid,
    /// Full JIDs joined under this nick (§7.2.8: one occupant for every resource of a user).
    sessions: Vec<String>,
    role: Role,
    /// The last presence the occupant sent, without its MUC payloads.
    presence: Element,
    /// XEP-0421.
    id: String,
    tokens: f64,
    tokens_at: i64,
}

/// Extras of the `<item/>` in a presence: a new nick (303), who acted and why.
#[derive(Default)]
struct ItemInfo<'a> {
    nick: Option<&'a str>,
    actor: Option<&'a str>,
    reason: Option<&'a str>,
}

pub struct Room {
    jid: BareJid,
    pub config: RoomConfig,
    /// A new room stays locked until its owner configures it (§10.1).
    locked: bool,
    /// Set at creation, consumed by the creator's join (201).
    created: bool,
    destroyed: bool,
    subject: Option<Element>,
    affiliations: HashMap<String, AffiliationEntry>,
    /// By nick key (see [`nick::key`]).
    occupants: HashMap<String, Occupant>,
    /// Full JID → nick key.
    sessions: HashMap<String, String>,
    history: VecDeque<(i64, Element)>,
    limits: Limits,
    /// The time of the stanza being handled (Unix milliseconds).
    now_ms: i64,
    /// Iqs forwarded to occupants, by the id the room gave them.
    forwards: VecDeque<(String, Forwarded)>,
    next_forward: u64,
}

/// Where the answer to a forwarded iq goes back to.
struct Forwarded {
    /// Who was asked: only its answer counts.
    asked: String,
    id: String,
    to: String,
    from: String,
}

fn err(c: Cond) -> StanzaError {
    StanzaError::new(c)
}

impl Room {
    /// A room that `owner` creates by joining it: locked until configured.
    pub fn create(jid: BareJid, owner: &BareJid, config: RoomConfig, limits: Limits) -> Room {
        let mut room = Room::restore(jid, config, None, Vec::new(), Vec::new(), limits);
        room.locked = true;
        room.created = true;
        room.set_affiliation(owner.as_str(), Affiliation::Owner, None);
        room
    }

    /// A persistent room read back from storage.
    pub fn restore(
        jid: BareJid,
        config: RoomConfig,
        subject: Option<Element>,
        affiliations: Vec<(String, AffiliationEntry)>,
        history: Vec<(i64, Element)>,
        limits: Limits,
    ) -> Room {
        Room {
            jid,
            config,
            locked: false,
            created: false,
            destroyed: false,
            subject,
            affiliations: affiliations.into_iter().collect(),
            occupants: HashMap::new(),
            sessions: HashMap::new(),
            history: history.into(),
            limits,
            now_ms: 0,
            forwards: VecDeque::new(),
            next_forward: 0,
        }
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    pub fn affiliations(&self) -> impl Iterator<Item = (&str, &AffiliationEntry)> {
        self.affiliations.iter().map(|(j, e)| (j.as_str(), e))
    }

    pub fn is_destroyed(&self) -> bool {
        self.destroyed
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    pub fn subject(&self) -> Option<&Element> {
        self.subject.as_ref()
    }

    pub fn affiliation_entry(&self, jid: &str) -> Option<&AffiliationEntry> {
        self.affiliations.get(jid)
    }

    /// Every full JID in the room (for the task's check of sessions that are gone).
    pub fn session_jids(&self) -> impl Iterator<Item = &str> {
        self.sessions.keys().map(String::as_str)
    }

    pub fn affiliation(&self, bare: &BareJid) -> Affiliation {
        self.affiliations
            .get(bare.as_str())
            .or_else(|| self.affiliations.get(bare.domain().as_str()))
            .map(|e| e.affiliation)
            .unwrap_or(Affiliation::None)
    }

    /// Whether `jid` may get an affiliation it does not have yet.
    fn has_room_for(&self, jid: &str) -> Result<(), StanzaError> {
        if self.affiliations.len() >= MAX_AFFILIATIONS && !self.affiliations.contains_key(jid) {
            return Err(err(Cond::ResourceConstraint).with_text("the room's lists are full"));
        }
        Ok(())
    }

    fn set_affiliation(&mut self, jid: &str, affiliation: Affiliation, reason: Option<&str>) {
        if affiliation == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            let entry = self
                .affiliations
                .entry(jid.to_string())
                .or_insert(AffiliationEntry {
                    affiliation,
                    nick: None,
                    reason: None,
                });
            entry.affiliation = affiliation;
            entry.reason = reason.map(str::to_string);
        }
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// §5.1.2: the role an affiliation starts with.
    fn default_role(&self, a: Affiliation) -> Role {
        match a {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    fn occupant_id(&self, bare: &BareJid) -> String {
        use base64::Engine;
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(&self.limits.secret);
        h.update(self.jid.as_str().as_bytes());
        h.update([0]);
        h.update(bare.as_str().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(&h.finalize()[..15])
    }

    fn by_session(&self, from: &str) -> Option<&Occupant> {
        self.occupants.get(self.sessions.get(from)?)
    }

    fn sees_jids(&self, viewer: &Occupant) -> bool {
        self.config.whois == Whois::Anyone || viewer.role == Role::Moderator
    }

    /// `subject`'s presence for `to` (one of the viewer's sessions).
    fn presence_for(
        &self,
        subject: &Occupant,
        to: &str,
        with_jid: bool,
        unavailable: bool,
        codes: &[u16],
        info: &ItemInfo,
    ) -> Element {
        let mut p = if unavailable {
            let mut p = Element::new("presence", NS_CLIENT).with_attr("type", "unavailable");
            // The status text of a leave goes to everyone (§7.14).
            for s in subject
                .presence
                .children()
                .filter(|c| c.is("status", NS_CLIENT))
            {
                p.push_child(s.clone());
            }
            p
        } else {
            subject.presence.clone()
        };
        p.set_attr("from", self.occupant_jid(&subject.nick));
        p.set_attr("to", to);
        let affiliation = self.affiliation(&subject.bare);
        let mut item = Element::new("item", NS_USER)
            .with_attr("affiliation", affiliation.as_str())
            .with_attr("role", subject.role.as_str());
        if with_jid {
            item.set_attr("jid", to_jid_of(subject, to));
        }
        if let Some(nick) = info.nick {
            item.set_attr("nick", nick);
        }
        if let Some(actor) = info.actor {
            item.push_child(Element::new("actor", NS_USER).with_attr("nick", actor));
        }
        if let Some(reason) = info.reason {
            item.push_child(Element::new("reason", NS_USER).with_text(reason));
        }
        let mut x = Element::new("x", NS_USER).with_child(item);
        for code in codes {
            x.push_child(Element::new("status", NS_USER).with_attr("code", code.to_string()));
        }
        p.push_child(x);
        p.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", &subject.id));
        p
    }

    /// `subject`'s presence to every other occupant (and to `subject`'s own sessions with
    /// `own` codes and 110, when `own` is given). Presence of a role the room does not
    /// broadcast reaches only the occupant itself.
    fn broadcast_presence(
        &self,
        o: &mut Outcome,
        subject: &Occupant,
        unavailable: bool,
        others: &[u16],
        own: Option<&[u16]>,
        info: &ItemInfo,
    ) {
        let key = nick::key(&subject.nick);
        if self.config.broadcasts(subject.role.as_str()) || unavailable {
            // Two versions: with the real JID for those who may see it, without for the rest.
            let (mut seeing, mut blind) = (Vec::new(), Vec::new());
            for (k, viewer) in &self.occupants {
                if *k == key && viewer.bare == subject.bare {
                    continue;
                }
                let list = if self.sees_jids(viewer) {
                    &mut seeing
                } else {
                    &mut blind
                };
                list.extend(viewer.sessions.iter().cloned());
            }
            for (to, with_jid) in [(seeing, true), (blind, false)] {
                if !to.is_empty() {
                    let mut p = self.presence_for(subject, "", with_jid, unavailable, others, info);
                    p.remove_attr("to");
                    o.fanned.push(Fanned {
                        before: o.out.len(),
                        stanza: p,
                        to,
                    });
                }
            }
        }
        if let Some(own) = own {
            let mut codes = own.to_vec();
            codes.push(110);
            for s in &subject.sessions {
                o.out
                    .push(self.presence_for(subject, s, true, unavailable, &codes, info));
            }
        }
    }

    /// Handles one stanza addressed to the room or to one of its occupants.
    pub fn handle(&mut self, stanza: &Stanza, now_ms: i64) -> Outcome {
        let mut o = Outcome::default();
        self.now_ms = now_ms;
        // Answers to forwarded iqs may come from a bare JID.
        if stanza.kind == xmppd_core::StanzaKind::Iq && !stanza.is_iq_request() {
            self.forwarded_answer(&mut o, stanza);
            return o;
        }
        let Some(from) = stanza
            .from
            .as_ref()
            .and_then(|f| f.try_as_full().ok().cloned())
        else {
            return o;
        };
        let result = match stanza.kind {
            xmppd_core::StanzaKind::Presence => self.presence(&mut o, stanza, &from),
            xmppd_core::StanzaKind::Message => self.message(&mut o, stanza, &from, now_ms),
            xmppd_core::StanzaKind::Iq => self.iq(&mut o, stanza, &from),
        };
        if let Err(e) = result {
            if let Some(reply) = stanza.error_reply(&e) {
                o.out.push(reply);
            }
        }
        o
    }

    /// Removes a session that is gone without a word (its stream closed, or an error came
    /// back from it): the others hear it left, with 333 (§11.1: removed for a technical
    /// reason).
    pub fn remove_session(&mut self, full: &str) -> Outcome {
        let mut o = Outcome::default();
        self.leave(&mut o, full, &[333], false);
        o
    }

    // ---- presence (§7.2 join, §7.6 nick change, §7.7 update, §7.14 leave) ----

    fn presence(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let f = from.as_str();
        match stanza.stanza_type() {
            "error" => {
                if stanza
                    .element()
                    .get_child("error", NS_CLIENT)
                    .is_some_and(means_gone)
                {
                    self.leave(o, f, &[333], false);
                }
                Ok(())
            }
            "unavailable" => {
                // Its status text goes to everyone (§7.14).
                if let Some(key) = self.sessions.get(f) {
                    let presence = strip_muc(stanza.element());
                    if let Some(occ) = self.occupants.get_mut(key) {
                        occ.presence = presence;
                    }
                }
                self.leave(o, f, &[], true);
                Ok(())
            }
            "" => {
                let requested = stanza
                    .to
                    .as_ref()
                    .and_then(|t| t.resource())
                    .map(|r| r.as_str().to_string())
                    // §7.2.1: no nickname is a malformed occupant JID.
                    .ok_or_else(|| err(Cond::JidMalformed))?;
                let (nick, modified) = nick::prepare(&requested, self.limits.max_nick_chars)
                    .ok_or_else(|| {
                        err(Cond::JidMalformed).with_text("not an acceptable nickname")
                    })?;
                if self.sessions.contains_key(f) {
                    self.change_presence(o, stanza, from, &nick)
                } else {
                    self.join(o, stanza, from, &nick, modified)
                }
            }
            // Subscriptions and probes mean nothing to a room.
            _ => Ok(()),
        }
    }

    /// Whether `nick` belongs to someone other than `bare` (in the room or reserved).
    fn nick_taken(&self, nick: &str, bare: &BareJid) -> bool {
        let key = nick::key(nick);
        self.occupants.get(&key).is_some_and(|o| o.bare != *bare)
            || self.affiliations.iter().any(|(jid, e)| {
                jid != bare.as_str() && e.nick.as_deref().is_some_and(|n| nick::key(n) == key)
            })
    }

    fn join(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        nick: &str,
        modified: bool,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        let affiliation = self.affiliation(&bare);
        // §10.1.1: until the owner configures it, nobody else may enter.
        if self.locked && affiliation != Affiliation::Owner {
            return Err(err(Cond::ItemNotFound).with_text("the room is locked"));
        }
        if affiliation == Affiliation::Outcast {
            return Err(err(Cond::Forbidden)); // §7.2.7
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(err(Cond::RegistrationRequired)); // §7.2.6
        }
        if let Some(password) = &self.config.password {
            let given = stanza
                .element()
                .get_child("x", NS_MUC)
                .and_then(|x| x.get_child("password", NS_MUC))
                .map(Element::text);
            if given.as_deref() != Some(password.as_str()) && affiliation < Affiliation::Admin {
                return Err(err(Cond::NotAuthorized)); // §7.2.5
            }
        }
        if self.nick_taken(nick, &bare) {
            return Err(err(Cond::Conflict)); // §7.2.8
        }
        let key = nick::key(nick);
        let existing = self.occupants.contains_key(&key);
        let cap = match self.config.max_users {
            0 => self.limits.max_occupants,
            n => n.min(self.limits.max_occupants),
        };
        // §7.2.9: admins and owners may enter a full room.
        if !existing && self.occupants.len() >= cap && affiliation < Affiliation::Admin {
            return Err(err(Cond::ServiceUnavailable).with_text("the room is full"));
        }
        let f = from.to_string();
        let presence = strip_muc(stanza.element());
        if existing {
            // Another session of the same user under the same nick: one occupant.
            let occ = self.occupants.get_mut(&key).expect("checked");
            occ.sessions.push(f.clone());
            occ.presence = presence;
        } else {
            let occ = Occupant {
                nick: nick.to_string(),
                bare: bare.clone(),
                sessions: vec![f.clone()],
                role: self.default_role(affiliation),
                presence,
                id: self.occupant_id(&bare),
                tokens: 2.0 * self.limits.messages_per_second,
                tokens_at: 0,
            };
            self.occupants.insert(key.clone(), occ);
        }
        self.sessions.insert(f.clone(), key.clone());
        let occ = &self.occupants[&key];
        // §7.2.2: the others first, then the newcomer to them, self-presence last.
        let with_jid = self.sees_jids(occ);
        for (k, other) in &self.occupants {
            if *k != key && self.config.broadcasts(other.role.as_str()) {
                o.out.push(self.presence_for(
                    other,
                    &f,
                    with_jid,
                    false,
                    &[],
                    &ItemInfo::default(),
                ));
            }
        }
        if !existing {
            self.broadcast_presence(o, occ, false, &[], None, &ItemInfo::default());
        }
        let mut codes = vec![];
        if self.config.whois == Whois::Anyone {
            codes.push(100);
        }
        if self.config.logging {
            codes.push(170);
        }
        if self.created {
            codes.push(201);
        }
        if modified {
            codes.push(210);
        }
        codes.push(110);
        o.out
            .push(self.presence_for(occ, &f, true, false, &codes, &ItemInfo::default()));
        self.created = false;
        self.send_history(o, stanza, &f);
        // §7.2.15: the subject comes last, empty when none was set.
        let mut subject = self.subject.clone().unwrap_or_else(|| {
            Element::new("message", NS_CLIENT)
                .with_attr("type", "groupchat")
                .with_attr("from", self.jid.as_str())
                .with_child(Element::new("subject", NS_CLIENT))
        });
        subject.set_attr("to", f);
        o.out.push(subject);
        Ok(())
    }

    /// §7.2.14: the history the newcomer asked for (all that is kept by default).
    fn send_history(&self, o: &mut Outcome, stanza: &Stanza, to: &str) {
        let request = stanza
            .element()
            .get_child("x", NS_MUC)
            .and_then(|x| x.get_child("history", NS_MUC));
        let number = |name: &str| request.and_then(|h| h.attr(name)?.trim().parse::<i64>().ok());
        let max_stanzas = number("maxstanzas").map(|n| n.max(0) as usize);
        let max_chars = number("maxchars").map(|n| n.max(0) as usize);
        let mut since = number("seconds").map(|s| self.now_ms / 1000 - s);
        if let Some(t) = request
            .and_then(|h| h.attr("since"))
            .and_then(parse_iso8601)
        {
            since = Some(since.map_or(t, |s| s.max(t)));
        }
        let mut chars = 0;
        let mut picked = Vec::new();
        for (stamp, el) in self.history.iter().rev() {
            if max_stanzas.is_some_and(|m| picked.len() >= m) || since.is_some_and(|s| *stamp < s) {
                break;
            }
            let mut copy = el.clone();
            copy.set_attr("to", to);
            copy.push_child(
                Element::new("delay", NS_DELAY)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("stamp", xmppd_server::time::iso8601(*stamp)),
            );
            chars += copy.to_xml().chars().count();
            if max_chars.is_some_and(|m| chars > m) {
                break;
            }
            picked.push(copy);
        }
        o.out.extend(picked.into_iter().rev());
    }

    /// A presence from an occupant's session: an update, or a nick change (§7.6).
    fn change_presence(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        nick: &str,
    ) -> Result<(), StanzaError> {
        let old_key = self.sessions[from.as_str()].clone();
        let new_key = nick::key(nick);
        let presence = strip_muc(stanza.element());
        if self.occupants[&old_key].nick == nick {
            let occ = self.occupants.get_mut(&old_key).expect("indexed");
            occ.presence = presence;
            let occ = &self.occupants[&old_key];
            self.broadcast_presence(o, occ, false, &[], Some(&[]), &ItemInfo::default());
            return Ok(());
        }
        let bare = from.to_bare();
        // The same user's other occupant under the new nick would merge two; refuse.
        if self.nick_taken(nick, &bare)
            || (new_key != old_key && self.occupants.contains_key(&new_key))
        {
            return Err(err(Cond::Conflict));
        }
        let mut occ = self.occupants.remove(&old_key).expect("indexed");
        // Unavailable from the old nick with 303 and the new nick, then available (§7.6.3).
        let info = ItemInfo {
            nick: Some(nick),
            ..ItemInfo::default()
        };
        self.broadcast_presence(o, &occ, true, &[303], Some(&[303]), &info);
        occ.nick = nick.to_string();
        occ.presence = presence;
        for s in &occ.sessions {
            self.sessions.insert(s.clone(), new_key.clone());
        }
        self.broadcast_presence(o, &occ, false, &[], Some(&[]), &ItemInfo::default());
        self.occupants.insert(new_key, occ);
        Ok(())
    }

    /// A session leaves (§7.14); the occupant goes when its last session does. `tell_self`:
    /// whether the session is there to hear its own unavailable presence.
    fn leave(&mut self, o: &mut Outcome, full: &str, codes: &[u16], tell_self: bool) {
        let Some(key) = self.sessions.remove(full) else {
            return;
        };
        let Some(occ) = self.occupants.get_mut(&key) else {
            return;
        };
        occ.sessions.retain(|s| s != full);
        let last = occ.sessions.is_empty();
        let mut gone = if last {
            self.occupants.remove(&key).expect("present")
        } else {
            // Only this session hears of it; for the others the occupant stays.
            let occ = &self.occupants[&key];
            if tell_self {
                let mut c = codes.to_vec();
                c.push(110);
                let mut leaving = occ.clone();
                leaving.role = Role::None;
                o.out
                    .push(self.presence_for(&leaving, full, true, true, &c, &ItemInfo::default()));
            }
            return;
        };
        gone.role = Role::None;
        if tell_self {
            gone.sessions = vec![full.to_string()];
        }
        let own = tell_self.then_some(codes);
        self.broadcast_presence(o, &gone, true, codes, own, &ItemInfo::default());
    }

    // ---- messages (§7.4 groupchat, §7.5 private, §7.8 invitations, §8.1 subject) ----

    fn message(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        now_ms: i64,
    ) -> Result<(), StanzaError> {
        let f = from.as_str();
        let kind = stanza.stanza_type();
        if kind == "error" {
            if stanza
                .element()
                .get_child("error", NS_CLIENT)
                .is_some_and(means_gone)
            {
                self.leave(o, f, &[333], false);
            }
            return Ok(());
        }
        let to_nick = stanza
            .to
            .as_ref()
            .and_then(|t| t.resource())
            .map(|r| r.as_str().to_string());
        if to_nick.is_none() && kind != "groupchat" {
            if let Some(x) = stanza.element().get_child("x", NS_USER) {
                return self.invitation(o, x, from);
            }
        }
        let Some(key) = self.sessions.get(f).cloned() else {
            return Err(err(Cond::NotAcceptable).with_text("you are not in the room"));
        };
        self.take_token(&key, now_ms)?;
        if to_nick.is_none() && kind != "groupchat" {
            if let Some(form) = Form::find_in(stanza.element()) {
                let form = form.map_err(|e| err(Cond::BadRequest).with_text(e.0))?;
                if form.form_type() == Some(NS_REQUEST) {
                    return self.voice_request(o, &form, &key);
                }
            }
        }
        let sender = &self.occupants[&key];
        let sender_jid = self.occupant_jid(&sender.nick);
        if let Some(nick) = to_nick {
            return self.private_message(o, stanza, &key, &nick);
        }
        if kind != "groupchat" {
            return Err(
                err(Cond::BadRequest).with_text("messages to the room are of type groupchat")
            );
        }
        let el = stanza.element();
        let is_subject = el.has_child("subject", NS_CLIENT) && !el.has_child("body", NS_CLIENT);
        if is_subject {
            // §8.1: moderators, and participants when the room lets them.
            let may = sender.role == Role::Moderator
                || (self.config.change_subject && sender.role == Role::Participant);
            if !may {
                return Err(err(Cond::Forbidden));
            }
        } else if sender.role < Role::Participant {
            return Err(err(Cond::Forbidden)); // §7.4: visitors have no voice
        }
        let mut reflected = el.clone();
        reflected.remove_children("occupant-id", NS_OCCUPANT_ID);
        reflected.remove_attr("to");
        reflected.set_attr("from", sender_jid);
        reflected
            .push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", &sender.id));
        self.fan_out(o, &reflected);
        if is_subject {
            self.subject = Some(reflected);
            o.changes.push(Change::Room);
        } else if el.has_child("body", NS_CLIENT) && self.config.history_length > 0 {
            let stamp = now_ms / 1000;
            self.history.push_back((stamp, reflected.clone()));
            while self.history.len() > self.config.history_length {
                self.history.pop_front();
            }
            o.changes.push(Change::History(stamp, reflected));
        }
        Ok(())
    }

    /// `el` to every session in the room.
    fn fan_out(&self, o: &mut Outcome, el: &Element) {
        let mut message = el.clone();
        message.remove_attr("to");
        o.fanned.push(Fanned {
            before: o.out.len(),
            stanza: message,
            to: self
                .occupants
                .values()
                .flat_map(|occ| occ.sessions.iter().cloned())
                .collect(),
        });
    }

    /// The per-occupant message rate: a bucket of twice the rate per second.
    fn take_token(&mut self, key: &str, now_ms: i64) -> Result<(), StanzaError> {
        let rate = self.limits.messages_per_second;
        let occ = self.occupants.get_mut(key).expect("indexed");
        let elapsed = (now_ms - occ.tokens_at).max(0) as f64 / 1000.0;
        occ.tokens = (occ.tokens + elapsed * rate).min(2.0 * rate);
        occ.tokens_at = now_ms;
        if occ.tokens < 1.0 {
            return Err(err(Cond::ResourceConstraint).with_text("too many messages; slow down"));
        }
        occ.tokens -= 1.0;
        Ok(())
    }

    fn private_message(
        &self,
        o: &mut Outcome,
        stanza: &Stanza,
        sender_key: &str,
        nick: &str,
    ) -> Result<(), StanzaError> {
        if stanza.stanza_type() == "groupchat" {
            return Err(err(Cond::BadRequest)); // §7.5
        }
        let sender = &self.occupants[sender_key];
        let allowed = match self.config.allow_pm {
            AllowPm::Anyone => true,
            AllowPm::Participants => sender.role >= Role::Participant,
            AllowPm::Moderators => sender.role == Role::Moderator,
            AllowPm::Nobody => false,
        };
        if !allowed {
            return Err(err(Cond::Forbidden).with_text("private messages are not allowed here"));
        }
        let target = self
            .occupants
            .get(&nick::key(nick))
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let mut copy = stanza.element().clone();
        copy.remove_children("occupant-id", NS_OCCUPANT_ID);
        copy.set_attr("from", self.occupant_jid(&sender.nick));
        if !copy.has_child("x", NS_USER) {
            copy.push_child(Element::new("x", NS_USER));
        }
        copy.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", &sender.id));
        for s in &target.sessions {
            let mut c = copy.clone();
            c.set_attr("to", s);
            o.out.push(c);
        }
        Ok(())
    }

    /// §8.6: a visitor asks for voice (the form goes to the moderators), or a moderator
    /// answers such a request (`muc#request_allow`).
    fn voice_request(
        &mut self,
        o: &mut Outcome,
        form: &Form,
        key: &str,
    ) -> Result<(), StanzaError> {
        use crate::forms::Field;
        let sender = &self.occupants[key];
        if form.kind == FormKind::Submit && form.get("muc#request_allow").is_some() {
            if sender.role != Role::Moderator {
                return Err(err(Cond::Forbidden));
            }
            let allow = form
                .boolean("muc#request_allow")
                .map_err(|e| err(Cond::BadRequest).with_text(e.0))?;
            let nick = form
                .single("muc#roomnick")
                .ok_or_else(|| err(Cond::BadRequest))?;
            let target = nick::key(nick);
            let visitor = self
                .occupants
                .get(&target)
                .is_some_and(|t| t.role == Role::Visitor);
            if allow == Some(true) && visitor {
                let actor = sender.nick.clone();
                self.apply_role(o, &target, Role::Participant, Some(&actor), None);
            }
            return Ok(());
        }
        if form
            .choice("muc#role", &["participant"])
            .map_err(|e| err(Cond::BadRequest).with_text(e.0))?
            .is_none()
        {
            return Err(err(Cond::BadRequest).with_text("muc#role must be participant"));
        }
        if sender.role != Role::Visitor {
            return Ok(()); // Nothing to ask for.
        }
        let request = Form::new(FormKind::Form)
            .title("Voice request")
            .instructions("To approve this request for voice, select \"Grant voice\" and submit.")
            .field(Field::form_type(NS_REQUEST))
            .field(
                Field::new("muc#role", "list-single")
                    .label("Requested role")
                    .value("participant"),
            )
            .field(
                Field::new("muc#jid", "jid-single")
                    .label("User ID")
                    .value(sender.bare.to_string()),
            )
            .field(
                Field::new("muc#roomnick", "text-single")
                    .label("Room nickname")
                    .value(sender.nick.clone()),
            )
            .field(
                Field::new("muc#request_allow", "boolean")
                    .label("Grant voice")
                    .boolean_value(false),
            );
        let message = Element::new("message", NS_CLIENT)
            .with_attr("from", self.jid.as_str())
            .with_child(request.to_element());
        for moderator in self
            .occupants
            .values()
            .filter(|m| m.role == Role::Moderator)
        {
            for s in &moderator.sessions {
                let mut m = message.clone();
                m.set_attr("to", s);
                o.out.push(m);
            }
        }
        Ok(())
    }

    /// §7.8.2 mediated invitations and §7.8.3 declines.
    fn invitation(
        &mut self,
        o: &mut Outcome,
        x: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        if let Some(decline) = x.get_child("decline", NS_USER) {
            let to = decline
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .ok_or_else(|| err(Cond::BadRequest))?;
            let mut d = Element::new("decline", NS_USER).with_attr("from", bare.as_str());
            if let Some(reason) = decline.get_child("reason", NS_USER) {
                d.push_child(reason.clone());
            }
            o.out.push(
                Element::new("message", NS_CLIENT)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_child(Element::new("x", NS_USER).with_child(d)),
            );
            return Ok(());
        }
        let Some(key) = self.sessions.get(from.as_str()) else {
            return Err(err(Cond::NotAcceptable).with_text("you are not in the room"));
        };
        let inviter = &self.occupants[key];
        let affiliation = self.affiliation(&bare);
        if self.config.members_only
            && affiliation < Affiliation::Admin
            && !(self.config.allow_invites && affiliation >= Affiliation::Member)
        {
            return Err(err(Cond::Forbidden)); // §9.5
        }
        if !self.config.members_only && !self.config.allow_invites && inviter.role < Role::Moderator
        {
            return Err(err(Cond::Forbidden));
        }
        let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
        if invites.is_empty() {
            return Err(err(Cond::BadRequest));
        }
        let mut targets = Vec::new();
        for invite in invites {
            let to = invite
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .ok_or_else(|| err(Cond::JidMalformed))?;
            targets.push((to, invite));
        }
        for (to, invite) in targets {
            let mut i = Element::new("invite", NS_USER).with_attr("from", bare.as_str());
            for child in invite
                .children()
                .filter(|c| c.is("reason", NS_USER) || c.is("continue", NS_USER))
            {
                i.push_child(child.clone());
            }
            let mut ux = Element::new("x", NS_USER).with_child(i);
            if let Some(password) = &self.config.password {
                ux.push_child(Element::new("password", NS_USER).with_text(password.clone()));
            }
            let body = format!("{bare} invites you to the room {}", self.jid);
            o.out.push(
                Element::new("message", NS_CLIENT)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_child(ux)
                    .with_child(Element::new("body", NS_CLIENT).with_text(body)),
            );
            let invitee = to.to_bare();
            // §7.8.2: in a members-only room the invitee becomes a member.
            if self.config.members_only
                && self.affiliation(&invitee) < Affiliation::Member
                && self.affiliation(&invitee) != Affiliation::Outcast
                && self.has_room_for(invitee.as_str()).is_ok()
            {
                self.set_affiliation(invitee.as_str(), Affiliation::Member, None);
                o.changes.push(Change::Affiliation(invitee.to_string()));
            }
        }
        Ok(())
    }

    // ---- iq (disco, §8–§10 admin and owner, XEP-0410 self-ping) ----

    fn iq(&mut self, o: &mut Outcome, stanza: &Stanza, from: &FullJid) -> Result<(), StanzaError> {
        let payload = stanza.iq_payload().ok_or_else(|| err(Cond::BadRequest))?;
        let get = stanza.stanza_type() == "get";
        let to_nick = stanza
            .to
            .as_ref()
            .and_then(|t| t.resource())
            .map(|r| r.as_str().to_string());
        if let Some(nick) = to_nick {
            // XEP-0410 §4: the service answers a self-ping for the occupant.
            let me = self
                .by_session(from.as_str())
                .ok_or_else(|| err(Cond::NotAcceptable))?;
            if payload.is("ping", NS_PING) && nick::key(&me.nick) == nick::key(&nick) {
                o.out.push(stanza.iq_result(None));
                return Ok(());
            }
            return self.forward_iq(o, stanza, from, &nick);
        }
        let result = match (payload.ns(), payload.name(), get) {
            (NS_DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                Some(self.disco_info())
            }
            (NS_DISCO_ITEMS, "query", true) => Some(Element::new("query", NS_DISCO_ITEMS)),
            (NS_PING, "ping", true) => None,
            (NS_ADMIN, "query", true) => Some(self.admin_list(payload, from)?),
            (NS_ADMIN, "query", false) => {
                self.admin_set(o, payload, from)?;
                None
            }
            (NS_REGISTER, "query", true) => Some(self.registration_form(from)),
            (NS_REGISTER, "query", false) => {
                self.register(o, payload, from)?;
                None
            }
            (NS_OWNER, "query", true) => {
                self.require_owner(from)?;
                Some(
                    Element::new("query", NS_OWNER)
                        .with_child(self.config.to_form(FormKind::Form).to_element()),
                )
            }
            (NS_OWNER, "query", false) => {
                self.require_owner(from)?;
                // The reply goes first: after a destroy, the owner's client still expects it.
                return self.owner_set(o, stanza, payload);
            }
            _ => return Err(err(Cond::ServiceUnavailable)),
        };
        o.out.push(stanza.iq_result(result));
        Ok(())
    }

    /// An iq for another occupant goes to its first session from the sender's occupant
    /// JID, under an id of the room's own so the answer finds its way back without either
    /// side learning the other's real JID.
    fn forward_iq(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        nick: &str,
    ) -> Result<(), StanzaError> {
        let sender = self
            .by_session(from.as_str())
            .ok_or_else(|| err(Cond::NotAcceptable))?;
        let target = self
            .occupants
            .get(&nick::key(nick))
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let to = target
            .sessions
            .first()
            .cloned()
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let (sender_jid, target_jid) = (
            self.occupant_jid(&sender.nick),
            self.occupant_jid(&target.nick),
        );
        self.next_forward += 1;
        let id = format!("muc-fwd-{}", self.next_forward);
        let mut el = stanza.element().clone();
        el.set_attr("id", id.as_str());
        el.set_attr("from", sender_jid);
        el.set_attr("to", to.as_str());
        let back = Forwarded {
            asked: to.clone(),
            id: stanza.id().unwrap_or_default().to_string(),
            to: from.to_string(),
            from: target_jid,
        };
        if self.forwards.len() >= MAX_FORWARDS {
            self.forwards.pop_front();
        }
        self.forwards.push_back((id, back));
        o.out.push(el);
        Ok(())
    }

    /// The answer to an iq the room forwarded, back to whoever asked.
    fn forwarded_answer(&mut self, o: &mut Outcome, stanza: &Stanza) {
        let Some(id) = stanza.id() else {
            return;
        };
        let from = stanza.from.as_ref().map(|f| f.as_str());
        let Some(pos) = self
            .forwards
            .iter()
            .position(|(i, f)| i == id && Some(f.asked.as_str()) == from)
        else {
            return;
        };
        let (_, back) = self.forwards.remove(pos).expect("found");
        let mut el = stanza.element().clone();
        el.set_attr("id", back.id);
        el.set_attr("from", back.from);
        el.set_attr("to", back.to);
        o.out.push(el);
    }

    /// §7.10: the form to reserve a nick, or `<registered/>` with it when there is one.
    fn registration_form(&self, from: &FullJid) -> Element {
        use crate::forms::Field;
        let mut q = Element::new("query", NS_REGISTER);
        let reserved = self
            .affiliations
            .get(from.to_bare().as_str())
            .and_then(|e| e.nick.clone());
        if let Some(nick) = &reserved {
            q.push_child(Element::new("registered", NS_REGISTER));
            q.push_child(Element::new("username", NS_REGISTER).with_text(nick.clone()));
        }
        let form = Form::new(FormKind::Form)
            .title("Reserve a nickname")
            .field(Field::form_type(NS_REGISTER_FORM))
            .field(
                Field::new("muc#register_roomnick", "text-single")
                    .label("Nickname")
                    .values(reserved)
                    .required(),
            );
        q.push_child(form.to_element());
        q
    }

    /// §7.10: reserving a nick makes the user a member; `<remove/>` cancels both.
    fn register(
        &mut self,
        o: &mut Outcome,
        payload: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        let mine = self.affiliation(&bare);
        if mine == Affiliation::Outcast {
            return Err(err(Cond::Forbidden));
        }
        if payload.has_child("remove", NS_REGISTER) {
            if mine >= Affiliation::Admin {
                return Err(err(Cond::NotAllowed).with_text("admins and owners stay"));
            }
            self.set_affiliation(bare.as_str(), Affiliation::None, None);
            o.changes.push(Change::Affiliation(bare.to_string()));
            return Ok(());
        }
        let form = match Form::find_in(payload) {
            Some(Ok(f)) if f.kind == FormKind::Submit => f,
            Some(Err(e)) => return Err(err(Cond::BadRequest).with_text(e.0)),
            _ => return Err(err(Cond::BadRequest)),
        };
        if form.form_type().is_some_and(|t| t != NS_REGISTER_FORM) {
            return Err(err(Cond::BadRequest).with_text("FORM_TYPE is not muc#register"));
        }
        let requested = form.single("muc#register_roomnick").ok_or_else(|| {
            err(Cond::NotAcceptable).with_text("muc#register_roomnick is required")
        })?;
        let (nick, _) = nick::prepare(requested, self.limits.max_nick_chars)
            .ok_or_else(|| err(Cond::NotAcceptable).with_text("not an acceptable nickname"))?;
        if self.nick_taken(&nick, &bare) {
            return Err(err(Cond::Conflict));
        }
        self.has_room_for(bare.as_str())?;
        if mine < Affiliation::Member {
            self.set_affiliation(bare.as_str(), Affiliation::Member, None);
        }
        if let Some(e) = self.affiliations.get_mut(bare.as_str()) {
            e.nick = Some(nick);
        }
        o.changes.push(Change::Affiliation(bare.to_string()));
        Ok(())
    }

    /// The room's disco#info: identity, `muc_*` features and the roominfo form (§6.4).
    pub fn disco_info(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr(
                    "name",
                    if self.config.name.is_empty() {
                        self.jid.node().map(|n| n.as_str()).unwrap_or_default()
                    } else {
                        &self.config.name
                    },
                ),
        );
        let mut features = vec![
            NS_MUC,
            NS_OCCUPANT_ID,
            NS_SELF_PING,
            NS_DISCO_INFO,
            NS_REGISTER,
        ];
        features.extend(self.config.features());
        for f in features {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        let subject = self
            .subject
            .as_ref()
            .and_then(|s| s.get_child("subject", NS_CLIENT))
            .map(Element::text)
            .unwrap_or_default();
        use crate::forms::Field;
        let form = Form::new(FormKind::Result)
            .field(Field::form_type(config::ROOMINFO))
            .field(
                Field::new("muc#roominfo_description", "text-single")
                    .label("Description")
                    .value(self.config.description.clone()),
            )
            .field(
                Field::new("muc#roominfo_occupants", "text-single")
                    .label("Number of occupants")
                    .value(self.occupants.len().to_string()),
            )
            .field(
                Field::new("muc#roominfo_subject", "text-single")
                    .label("Subject")
                    .value(subject),
            )
            .field(
                Field::new("muc#roominfo_subjectmod", "boolean")
                    .label("Occupants may change the subject")
                    .boolean_value(self.config.change_subject),
            )
            .field(
                Field::new("muc#roomconfig_roomname", "text-single")
                    .label("Name")
                    .value(self.config.name.clone()),
            )
            .field(
                Field::new("muc#maxhistoryfetch", "text-single")
                    .label("Maximum history")
                    .value(self.config.history_length.to_string()),
            );
        q.push_child(form.to_element());
        q
    }

    fn require_owner(&self, from: &FullJid) -> Result<(), StanzaError> {
        if self.affiliation(&from.to_bare()) == Affiliation::Owner {
            Ok(())
        } else {
            Err(err(Cond::Forbidden))
        }
    }

    /// §10.1.2 instant room, §10.1.3 reserved room, §10.2 configuration, §10.9 destroy.
    fn owner_set(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        payload: &Element,
    ) -> Result<(), StanzaError> {
        if let Some(destroy) = payload.get_child("destroy", NS_OWNER) {
            o.out.push(stanza.iq_result(None));
            self.destroy(o, destroy);
            return Ok(());
        }
        let form = match Form::find_in(payload) {
            None => return Err(err(Cond::BadRequest)),
            Some(Err(e)) => return Err(err(Cond::BadRequest).with_text(e.0)),
            Some(Ok(f)) => f,
        };
        match form.kind {
            FormKind::Cancel => {
                o.out.push(stanza.iq_result(None));
                // §10.1.3: cancelling the configuration of a new room destroys it.
                if self.locked {
                    self.destroy(o, &Element::new("destroy", NS_OWNER));
                }
                return Ok(());
            }
            FormKind::Submit => {}
            _ => return Err(err(Cond::BadRequest)),
        }
        let new = self
            .config
            .apply(&form, self.limits.max_history)
            .map_err(|e| err(Cond::NotAcceptable).with_text(e.0))?;
        let old = std::mem::replace(&mut self.config, new);
        while self.history.len() > self.config.history_length {
            self.history.pop_front();
        }
        o.out.push(stanza.iq_result(None));
        o.changes.push(Change::Room);
        if self.locked {
            self.locked = false;
            return Ok(());
        }
        // §10.2.1: occupants hear what changed.
        let mut x = Element::new("x", NS_USER);
        for code in config::change_codes(&old, &self.config) {
            x.push_child(Element::new("status", NS_USER).with_attr("code", code.to_string()));
        }
        let notice = Element::new("message", NS_CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.as_str())
            .with_child(x);
        self.fan_out(o, &notice);
        if self.config.members_only && !old.members_only {
            // 322 (§10.2): those who are not members leave.
            let out: Vec<String> = self
                .occupants
                .iter()
                .filter(|(_, occ)| self.affiliation(&occ.bare) < Affiliation::Member)
                .map(|(k, _)| k.clone())
                .collect();
            for key in out {
                self.remove_occupant(o, &key, 322, &ItemInfo::default());
            }
        }
        if old.whois != self.config.whois {
            // Who sees real JIDs changed: everyone gets the list again with or without them.
            let keys: Vec<String> = self.occupants.keys().cloned().collect();
            for k in keys {
                let occ = &self.occupants[&k];
                self.broadcast_presence(o, occ, false, &[], None, &ItemInfo::default());
            }
        }
        Ok(())
    }

    fn destroy(&mut self, o: &mut Outcome, destroy: &Element) {
        let mut d = Element::new("destroy", NS_USER);
        if let Some(alt) = destroy.attr("jid") {
            d.set_attr("jid", alt);
        }
        for c in destroy
            .children()
            .filter(|c| c.name() == "reason" || c.name() == "password")
        {
            d.push_child(Element::new(c.name(), NS_USER).with_text(c.text()));
        }
        for occ in self.occupants.values() {
            for s in &occ.sessions {
                let item = Element::new("item", NS_USER)
                    .with_attr("affiliation", "none")
                    .with_attr("role", "none");
                o.out.push(
                    Element::new("presence", NS_CLIENT)
                        .with_attr("type", "unavailable")
                        .with_attr("from", self.occupant_jid(&occ.nick))
                        .with_attr("to", s)
                        .with_child(
                            Element::new("x", NS_USER)
                                .with_child(item)
                                .with_child(d.clone()),
                        ),
                );
            }
        }
        self.occupants.clear();
        self.sessions.clear();
        self.destroyed = true;
        o.changes.push(Change::Destroyed);
    }

    /// Takes an occupant out with a status code (307 kick, 301 ban, 321, 322): unavailable
    /// to everyone, itself included with 110.
    fn remove_occupant(&mut self, o: &mut Outcome, key: &str, code: u16, info: &ItemInfo) {
        let Some(mut occ) = self.occupants.remove(key) else {
            return;
        };
        for s in &occ.sessions {
            self.sessions.remove(s);
        }
        occ.role = Role::None;
        self.broadcast_presence(o, &occ, true, &[code], Some(&[code]), info);
    }

    /// Role (by nick) and affiliation (by JID) lists (§8.5, §9.2, §9.5, §9.8, §10.5, §10.8).
    fn admin_list(&self, payload: &Element, from: &FullJid) -> Result<Element, StanzaError> {
        let item = payload
            .get_child("item", NS_ADMIN)
            .ok_or_else(|| err(Cond::BadRequest))?;
        let me = from.to_bare();
        let mut q = Element::new("query", NS_ADMIN);
        if let Some(role) = item.attr("role") {
            let role = Role::parse(role).ok_or_else(|| err(Cond::BadRequest))?;
            let viewer = self
                .by_session(from.as_str())
                .filter(|v| v.role == Role::Moderator)
                .ok_or_else(|| err(Cond::Forbidden))?;
            for occ in self.occupants.values().filter(|o| o.role == role) {
                let mut i = Element::new("item", NS_ADMIN)
                    .with_attr("nick", &occ.nick)
                    .with_attr("role", role.as_str())
                    .with_attr("affiliation", self.affiliation(&occ.bare).as_str());
                if self.sees_jids(viewer) {
                    i.set_attr("jid", occ.bare.as_str());
                }
                q.push_child(i);
            }
            return Ok(q);
        }
        let affiliation = item
            .attr("affiliation")
            .and_then(Affiliation::parse)
            .ok_or_else(|| err(Cond::BadRequest))?;
        let mine = self.affiliation(&me);
        // §9.5: in a non-anonymous members-only room, members may read who belongs (clients
        // encrypting for every member need it); the ban list stays with admins.
        let member_may = self.config.members_only
            && self.config.whois == Whois::Anyone
            && mine >= Affiliation::Member
            && affiliation >= Affiliation::Member;
        if mine < Affiliation::Admin && !member_may {
            return Err(err(Cond::Forbidden));
        }
        let mut list: Vec<(&String, &AffiliationEntry)> = self
            .affiliations
            .iter()
            .filter(|(_, e)| e.affiliation == affiliation)
            .collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        for (jid, e) in list {
            let mut i = Element::new("item", NS_ADMIN)
                .with_attr("jid", jid)
                .with_attr("affiliation", affiliation.as_str());
            if let Some(nick) = &e.nick {
                i.set_attr("nick", nick);
            }
            if let Some(reason) = &e.reason {
                i.push_child(Element::new("reason", NS_ADMIN).with_text(reason.clone()));
            }
            q.push_child(i);
        }
        Ok(q)
    }

    /// Role and affiliation changes (§8.2–§8.5, §9.1–§9.8, §10.3–§10.8), all or none.
    fn admin_set(
        &mut self,
        o: &mut Outcome,
        payload: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let items: Vec<&Element> = payload
            .children()
            .filter(|c| c.is("item", NS_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(err(Cond::BadRequest));
        }
        let me = from.to_bare();
        let mine = self.affiliation(&me);
        let actor = self
            .by_session(from.as_str())
            .map(|a| (a.nick.clone(), a.role));
        let mut plan = Vec::new();
        for item in &items {
            let reason = item.get_child("reason", NS_ADMIN).map(Element::text);
            if let Some(role) = item.attr("role") {
                let role = Role::parse(role).ok_or_else(|| err(Cond::BadRequest))?;
                let nick = item.attr("nick").ok_or_else(|| err(Cond::BadRequest))?;
                let key = nick::key(nick);
                let target = self
                    .occupants
                    .get(&key)
                    .ok_or_else(|| err(Cond::ItemNotFound))?;
                let theirs = self.affiliation(&target.bare);
                let (_, my_role) = actor.clone().ok_or_else(|| err(Cond::Forbidden))?;
                if my_role != Role::Moderator {
                    return Err(err(Cond::Forbidden));
                }
                // §8.2–§8.4: admins and owners keep their role against moderators.
                if theirs >= Affiliation::Admin && role != Role::Moderator && theirs >= mine {
                    return Err(err(Cond::NotAllowed));
                }
                // §9.6/§9.7: moderator status comes and goes with admins only.
                if (role == Role::Moderator || target.role == Role::Moderator)
                    && mine < Affiliation::Admin
                {
                    return Err(err(Cond::Forbidden));
                }
                plan.push(Plan::Role(key, role, reason));
            } else if let Some(affiliation) = item.attr("affiliation") {
                let affiliation =
                    Affiliation::parse(affiliation).ok_or_else(|| err(Cond::BadRequest))?;
                let jid = item
                    .attr("jid")
                    .and_then(|j| Jid::new(j).ok())
                    .ok_or_else(|| err(Cond::JidMalformed))?;
                let jid = jid.to_bare();
                let theirs = self.affiliation(&jid);
                // §10.3–§10.8: owners manage owners and admins; admins the rest (§9).
                let needed = if affiliation >= Affiliation::Admin || theirs >= Affiliation::Admin {
                    Affiliation::Owner
                } else {
                    Affiliation::Admin
                };
                if mine < needed {
                    return Err(if mine >= Affiliation::Admin {
                        err(Cond::NotAllowed)
                    } else {
                        err(Cond::Forbidden)
                    });
                }
                if affiliation != Affiliation::None {
                    self.has_room_for(jid.as_str())?;
                }
                plan.push(Plan::Affiliation(jid, affiliation, reason));
            } else {
                return Err(err(Cond::BadRequest));
            }
        }
        // §10.4: a room keeps at least one owner.
        let mut owners: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(_, e)| e.affiliation == Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        for p in &plan {
            if let Plan::Affiliation(jid, a, _) = p {
                owners.retain(|j| j != jid.as_str());
                if *a == Affiliation::Owner {
                    owners.push(jid.to_string());
                }
            }
        }
        if owners.is_empty() {
            return Err(err(Cond::Conflict).with_text("a room needs an owner"));
        }
        let actor_nick = actor.map(|a| a.0);
        for p in plan {
            match p {
                Plan::Role(key, role, reason) => {
                    self.apply_role(o, &key, role, actor_nick.as_deref(), reason.as_deref())
                }
                Plan::Affiliation(jid, a, reason) => {
                    self.apply_affiliation(o, &jid, a, actor_nick.as_deref(), reason.as_deref())
                }
            }
        }
        Ok(())
    }

    fn apply_role(
        &mut self,
        o: &mut Outcome,
        key: &str,
        role: Role,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        let info = ItemInfo {
            nick: None,
            actor,
            reason,
        };
        if role == Role::None {
            return self.remove_occupant(o, key, 307, &info); // §8.2 kick
        }
        let Some(occ) = self.occupants.get_mut(key) else {
            return;
        };
        occ.role = role;
        let occ = &self.occupants[key];
        self.broadcast_presence(o, occ, false, &[], Some(&[]), &info);
    }

    fn apply_affiliation(
        &mut self,
        o: &mut Outcome,
        jid: &BareJid,
        a: Affiliation,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        self.set_affiliation(jid.as_str(), a, reason);
        o.changes.push(Change::Affiliation(jid.to_string()));
        let info = ItemInfo {
            nick: None,
            actor,
            reason,
        };
        let keys: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, occ)| occ.bare == *jid)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if a == Affiliation::Outcast {
                self.remove_occupant(o, &key, 301, &info); // §9.1 ban
            } else if a < Affiliation::Member && self.config.members_only {
                self.remove_occupant(o, &key, 321, &info); // §9.4
            } else {
                let role = self.default_role(a);
                let occ = self.occupants.get_mut(&key).expect("listed");
                occ.role = role;
                let occ = &self.occupants[&key];
                self.broadcast_presence(o, occ, false, &[], Some(&[]), &info);
            }
        }
    }
}

enum Plan {
    Role(String, Role, Option<String>),
    Affiliation(BareJid, Affiliation, Option<String>),
}

/// The real JID shown for `subject` to a viewer: the session the presence is about when
/// it goes to that session itself, else the occupant's first session.
fn to_jid_of<'a>(subject: &'a Occupant, to: &'a str) -> &'a str {
    if subject.sessions.iter().any(|s| s == to) {
        to
    } else {
        subject
            .sessions
            .first()
            .map(String::as_str)
            .unwrap_or(subject.bare.as_str())
    }
}

/// The presence as the room rebroadcasts it: its own children without MUC payloads or a
/// forged occupant id (XEP-0421 §4), and no addressing.
fn strip_muc(el: &Element) -> Element {
    let mut p = Element::new("presence", NS_CLIENT);
    for c in el.children() {
        if c.ns() != NS_MUC && c.ns() != NS_USER && c.ns() != NS_OCCUPANT_ID {
            p.push_child(c.clone());
        }
    }
    p
}

/// Error conditions that say the occupant's session is no longer there (ghosts).
fn means_gone(error: &Element) -> bool {
    const GONE: [&str; 8] = [
        "gone",
        "item-not-found",
        "not-acceptable",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    ];
    error.children().any(|c| GONE.contains(&c.name()))
}

/// `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)` (XEP-0082) as Unix seconds.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s.get(4..5) != Some("-") || s.get(10..11) != Some("T") || !(1..=12).contains(&mo) {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" => 0,
        _ => {
            let sign = match rest.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            sign * (rest.get(1..3)?.parse::<i64>().ok()? * 3600
                + rest.get(4..6)?.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "room@conference.x";

    fn limits() -> Limits {
        Limits {
            max_occupants: 3,
            max_history: 50,
            max_nick_chars: 20,
            messages_per_second: 100.0,
            secret: std::sync::Arc::from(&[7u8; 16][..]),
        }
    }

    fn bare(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    /// A new room owned by alice, who is in it as "owner".
    fn new_room() -> Room {
        let mut room = Room::create(bare(ROOM), &bare("alice@x"), RoomConfig::new(10), limits());
        send(&mut room, "<presence from='alice@x/a' to='room@conference.x/owner'><x xmlns='http://jabber.org/protocol/muc'/></presence>");
        room
    }

    /// An unlocked room (instant room, §10.1.2).
    fn open_room() -> Room {
        let mut room = new_room();
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>");
        assert_eq!(o.out[0].attr("type"), Some("result"));
        room
    }

    fn send(room: &mut Room, xml: &str) -> Outcome {
        let el = xmppd_xml::parse_fragment(xml, NS_CLIENT).expect("xml");
        room.handle(&Stanza::parse(el).expect("stanza"), 1_000_000)
    }

    fn join(room: &mut Room, who: &str, nick: &str) -> Outcome {
        send(room, &format!("<presence from='{who}' to='room@conference.x/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"))
    }

    fn to<'a>(o: &'a Outcome, jid: &str) -> Vec<&'a Element> {
        o.out
            .iter()
            .filter(|e| e.attr("to") == Some(jid))
            .chain(
                o.fanned
                    .iter()
                    .filter(|f| f.to.iter().any(|t| t == jid))
                    .map(|f| &f.stanza),
            )
            .collect()
    }

    /// Every stanza, fan-outs counted once per recipient.
    fn all(o: &Outcome) -> Vec<&Element> {
        let copies = o
            .fanned
            .iter()
            .flat_map(|f| f.to.iter().map(move |_| &f.stanza));
        o.out.iter().chain(copies).collect()
    }

    fn codes(el: &Element) -> Vec<String> {
        el.get_child("x", NS_USER)
            .map(|x| {
                x.children()
                    .filter_map(|s| s.attr("code").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn item(el: &Element) -> &Element {
        el.get_child("x", NS_USER)
            .and_then(|x| x.get_child("item", NS_USER))
            .expect("item")
    }

    fn error(o: &Outcome) -> String {
        let e = o
            .out
            .iter()
            .find(|e| e.attr("type") == Some("error"))
            .expect("an error");
        e.get_child("error", NS_CLIENT)
            .unwrap()
            .children()
            .next()
            .unwrap()
            .name()
            .to_string()
    }

    #[test]
    fn the_creator_gets_201_and_the_room_is_locked_until_configured() {
        let mut room = Room::create(bare(ROOM), &bare("alice@x"), RoomConfig::new(10), limits());
        let o = join(&mut room, "alice@x/a", "owner");
        let [own, subject] = to(&o, "alice@x/a")[..] else {
            panic!("{o:?}")
        };
        assert_eq!(codes(own), ["201", "110"]);
        assert_eq!(item(own).attr("affiliation"), Some("owner"));
        assert_eq!(item(own).attr("role"), Some("moderator"));
        assert!(subject.has_child("subject", NS_CLIENT));
        assert_eq!(error(&join(&mut room, "bob@x/b", "bob")), "item-not-found");
        let mut room = open_room();
        let o = join(&mut room, "bob@x/b", "bob");
        let bob: Vec<_> = to(&o, "bob@x/b");
        // The owner's presence first, self-presence (110) next, the subject last.
        assert_eq!(bob[0].attr("from"), Some("room@conference.x/owner"));
        assert_eq!(codes(bob[1]), ["110"]);
        assert!(item(bob[0]).attr("jid").is_none(), "semi-anonymous");
        assert!(bob[2].has_child("subject", NS_CLIENT));
        // The owner (a moderator) sees bob's real JID.
        let seen = to(&o, "alice@x/a");
        assert_eq!(item(seen[0]).attr("jid"), Some("bob@x/b"));
        assert!(seen[0].get_child("occupant-id", NS_OCCUPANT_ID).is_some());
    }

    #[test]
    fn entry_is_refused_with_the_errors_of_section_7_2() {
        let mut room = open_room();
        assert_eq!(error(&join(&mut room, "bob@x/b", "Owner")), "conflict");
        assert_eq!(error(&join(&mut room, "bob@x/b", "  ")), "jid-malformed");
        send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='eve@x' affiliation='outcast'/></query></iq>");
        assert_eq!(error(&join(&mut room, "eve@x/e", "eve")), "forbidden");
        join(&mut room, "bob@x/b", "bob");
        join(&mut room, "carol@x/c", "carol");
        assert_eq!(
            error(&join(&mut room, "dave@x/d", "dave")),
            "service-unavailable"
        );
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field><field var='muc#roomconfig_roomsecret'><value>pw</value></field></x></query></iq>");
        // 322: bob and carol are not members and leave.
        let bob = to(&o, "bob@x/b");
        assert!(bob.iter().any(
            |p| codes(p).contains(&"322".to_string()) && codes(p).contains(&"110".to_string())
        ));
        assert_eq!(room.occupant_count(), 1);
        assert_eq!(
            error(&join(&mut room, "dave@x/d", "dave")),
            "registration-required"
        );
        send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='dave@x' affiliation='member'/></query></iq>");
        assert_eq!(
            error(&join(&mut room, "dave@x/d", "dave")),
            "not-authorized"
        );
        let o = send(&mut room, "<presence from='dave@x/d' to='room@conference.x/dave'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>");
        assert_eq!(codes(to(&o, "dave@x/d")[1]), ["110"]);
    }

    #[test]
    fn a_nick_change_is_unavailable_with_303_then_available() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        let o = join(&mut room, "bob@x/b", "robert");
        let alice = to(&o, "alice@x/a");
        assert_eq!(alice[0].attr("type"), Some("unavailable"));
        assert_eq!(alice[0].attr("from"), Some("room@conference.x/bob"));
        assert_eq!(codes(alice[0]), ["303"]);
        assert_eq!(item(alice[0]).attr("nick"), Some("robert"));
        assert_eq!(alice[1].attr("from"), Some("room@conference.x/robert"));
        let bob = to(&o, "bob@x/b");
        assert_eq!(codes(bob[0]), ["303", "110"]);
        assert_eq!(codes(bob[1]), ["110"]);
        assert_eq!(error(&join(&mut room, "bob@x/b", "OWNER")), "conflict");
    }

    #[test]
    fn two_sessions_share_one_occupant_and_leave_one_by_one() {
        let mut room = open_room();
        join(&mut room, "bob@x/phone", "bob");
        let o = join(&mut room, "bob@x/laptop", "bob");
        assert!(
            to(&o, "alice@x/a").is_empty(),
            "no second presence for the same occupant"
        );
        assert_eq!(room.occupant_count(), 2);
        let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x' type='groupchat' id='g1'><body>hi</body></message>");
        assert_eq!(
            to(&o, "bob@x/phone").len() + to(&o, "bob@x/laptop").len(),
            2
        );
        let o = send(
            &mut room,
            "<presence from='bob@x/phone' to='room@conference.x/bob' type='unavailable'/>",
        );
        assert!(to(&o, "alice@x/a").is_empty());
        assert_eq!(codes(to(&o, "bob@x/phone")[0]), ["110"]);
        let o = send(&mut room, "<presence from='bob@x/laptop' to='room@conference.x/bob' type='unavailable'><status>bye</status></presence>");
        let seen = to(&o, "alice@x/a");
        assert_eq!(seen[0].attr("type"), Some("unavailable"));
        assert_eq!(item(seen[0]).attr("role"), Some("none"));
        assert!(seen[0].has_child("status", NS_CLIENT));
        assert_eq!(room.occupant_count(), 1);
    }

    #[test]
    fn groupchat_is_reflected_with_its_id_and_kept_as_history() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x' type='groupchat' id='m1'><body>one</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>");
        assert_eq!(all(&o).len(), 2);
        for m in all(&o) {
            assert_eq!(m.attr("id"), Some("m1"));
            assert_eq!(m.attr("from"), Some("room@conference.x/bob"));
            let ids: Vec<_> = m
                .children()
                .filter(|c| c.is("occupant-id", NS_OCCUPANT_ID))
                .collect();
            assert_eq!(ids.len(), 1);
            assert_ne!(ids[0].attr("id"), Some("forged"));
        }
        assert!(matches!(o.changes[..], [Change::History(1000, _)]));
        send(&mut room, "<message from='bob@x/b' to='room@conference.x' type='groupchat' id='m2'><body>two</body></message>");
        let o = send(&mut room, "<presence from='carol@x/c' to='room@conference.x/carol'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='1'/></x></presence>");
        let history: Vec<_> = to(&o, "carol@x/c")
            .into_iter()
            .filter(|m| m.has_child("body", NS_CLIENT))
            .collect();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].attr("id"), Some("m2"));
        let delay = history[0].get_child("delay", NS_DELAY).unwrap();
        assert_eq!(delay.attr("from"), Some(ROOM));
        let o = send(&mut room, "<presence from='dave@x/d' to='room@conference.x/dave'><x xmlns='http://jabber.org/protocol/muc'><history maxchars='0'/></x></presence>");
        assert!(!all(&o).iter().any(|m| m.has_child("body", NS_CLIENT)));
        let o = send(&mut room, "<message from='eve@x/e' to='room@conference.x' type='groupchat'><body>spam</body></message>");
        assert_eq!(error(&o), "not-acceptable");
        let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/carol' type='groupchat'><body>pm</body></message>");
        assert_eq!(error(&o), "bad-request");
        let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/carol' type='chat' id='p'><body>pm</body></message>");
        let pm = to(&o, "carol@x/c");
        assert_eq!(pm[0].attr("from"), Some("room@conference.x/bob"));
        assert!(pm[0].has_child("x", NS_USER));
    }

    #[test]
    fn moderators_kick_admins_ban_and_the_protected_are_not_allowed() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        join(&mut room, "carol@x/c", "carol");
        let kick = |nick: &str| {
            format!("<iq from='{{}}' to='room@conference.x' type='set' id='k'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='{nick}' role='none'><reason>out</reason></item></query></iq>")
        };
        let as_ = |who: &str, t: String| t.replace("{}", who);
        assert_eq!(
            error(&send(&mut room, &as_("bob@x/b", kick("carol")))),
            "forbidden"
        );
        assert_eq!(error(&send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='set' id='a'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='carol@x' affiliation='outcast'/></query></iq>")), "forbidden");
        let o = send(&mut room, &as_("alice@x/a", kick("carol")));
        let carol = to(&o, "carol@x/c");
        assert_eq!(carol[0].attr("type"), Some("unavailable"));
        assert_eq!(codes(carol[0]), ["307", "110"]);
        let i = item(carol[0]);
        assert_eq!(
            i.get_child("actor", NS_USER).unwrap().attr("nick"),
            Some("owner")
        );
        assert_eq!(i.get_child("reason", NS_USER).unwrap().text(), "out");
        assert_eq!(codes(to(&o, "bob@x/b")[0]), ["307"]);
        assert!(to(&o, "alice@x/a")
            .iter()
            .any(|e| e.attr("type") == Some("result")));
        // Voice and moderator grants, and their limits.
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='v'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='moderator'/></query></iq>");
        assert_eq!(item(to(&o, "bob@x/b")[0]).attr("role"), Some("moderator"));
        assert_eq!(
            error(&send(&mut room, &as_("bob@x/b", kick("owner")))),
            "not-allowed"
        );
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@x' affiliation='outcast'><reason>bye</reason></item></query></iq>");
        assert_eq!(codes(to(&o, "bob@x/b")[0]), ["301", "110"]);
        assert!(o.changes.contains(&Change::Affiliation("bob@x".into())));
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>");
        let list = o.out[0].get_child("query", NS_ADMIN).unwrap();
        assert_eq!(
            list.get_child("item", NS_ADMIN).unwrap().attr("jid"),
            Some("bob@x")
        );
        // The last owner stays (§10.4).
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='o'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@x' affiliation='admin'/></query></iq>");
        assert_eq!(error(&o), "conflict");
    }

    #[test]
    fn visitors_are_silent_in_moderated_rooms_and_config_changes_are_announced() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field><field var='muc#roomconfig_whois'><value>anyone</value></field></x></query></iq>");
        let notice = to(&o, "bob@x/b")
            .into_iter()
            .find(|m| m.name() == "message")
            .unwrap();
        assert_eq!(codes(notice), ["104", "172"]);
        assert_eq!(error(&send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='get' id='f'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")), "forbidden");
        let o = join(&mut room, "carol@x/c", "carol");
        let own = to(&o, "carol@x/c")
            .into_iter()
            .find(|p| codes(p).contains(&"110".to_string()))
            .unwrap();
        assert_eq!(codes(own), ["100", "110"]);
        assert_eq!(item(own).attr("role"), Some("visitor"));
        let o = send(&mut room, "<message from='carol@x/c' to='room@conference.x' type='groupchat'><body>hi</body></message>");
        assert_eq!(error(&o), "forbidden");
        let o = send(&mut room, "<message from='carol@x/c' to='room@conference.x' type='groupchat'><subject>new</subject></message>");
        assert_eq!(error(&o), "forbidden");
        let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x' type='groupchat'><subject>new</subject></message>");
        assert_eq!(all(&o).len(), 3);
        assert_eq!(o.changes, [Change::Room]);
    }

    #[test]
    fn self_ping_errors_that_mean_gone_and_destroy() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        let o = send(&mut room, "<iq from='bob@x/b' to='room@conference.x/bob' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
        assert_eq!(o.out[0].attr("type"), Some("result"));
        let o = send(&mut room, "<iq from='eve@x/e' to='room@conference.x/bob' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
        assert_eq!(error(&o), "not-acceptable");
        let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x/owner' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
        assert_eq!(codes(to(&o, "alice@x/a")[0]), ["333"]);
        assert_eq!(room.occupant_count(), 1);
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='d'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='other@conference.x'><reason>moved</reason></destroy></query></iq>");
        let d = to(&o, "alice@x/a")[1]
            .get_child("x", NS_USER)
            .unwrap()
            .get_child("destroy", NS_USER)
            .unwrap();
        assert_eq!(d.attr("jid"), Some("other@conference.x"));
        assert!(room.is_destroyed() && room.is_empty());
        assert!(o.changes.contains(&Change::Destroyed));
    }

    #[test]
    fn a_registered_nick_is_reserved_and_makes_a_member() {
        let mut room = open_room();
        let o = send(&mut room, "<iq from='bob@x/b' to='room@conference.x' type='get' id='r'><query xmlns='jabber:iq:register'/></iq>");
        let form = o.out[0]
            .get_child("query", NS_REGISTER)
            .and_then(|q| q.get_child("x", crate::forms::NS));
        assert!(form.is_some(), "{o:?}");
        let register = |nick: &str| {
            format!("<iq from='bob@x/b' to='room@conference.x' type='set' id='r'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field><field var='muc#register_roomnick'><value>{nick}</value></field></x></query></iq>")
        };
        assert_eq!(error(&send(&mut room, &register("Owner"))), "conflict");
        let o = send(&mut room, &register("thebob"));
        assert_eq!(o.out[0].attr("type"), Some("result"));
        assert_eq!(room.affiliation(&bare("bob@x")), Affiliation::Member);
        assert_eq!(error(&join(&mut room, "carol@x/c", "TheBob")), "conflict");
        assert_eq!(
            codes(to(&join(&mut room, "bob@x/b", "thebob"), "bob@x/b")[1]),
            ["110"]
        );
    }

    #[test]
    fn iqs_to_occupants_are_forwarded_and_answered_through_the_room() {
        let mut room = open_room();
        join(&mut room, "bob@x/b", "bob");
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x/bob' type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>");
        let fwd = &o.out[0];
        assert_eq!(fwd.attr("to"), Some("bob@x/b"));
        assert_eq!(fwd.attr("from"), Some("room@conference.x/owner"));
        let id = fwd.attr("id").unwrap().to_string();
        // A forged answer from someone else is ignored.
        let forged = send(
            &mut room,
            &format!("<iq from='eve@x/e' to='room@conference.x/owner' type='result' id='{id}'/>"),
        );
        assert!(forged.out.is_empty());
        let o = send(&mut room, &format!("<iq from='bob@x/b' to='room@conference.x/owner' type='result' id='{id}'><vCard xmlns='vcard-temp'/></iq>"));
        let back = &o.out[0];
        assert_eq!(
            (back.attr("to"), back.attr("from"), back.attr("id")),
            (Some("alice@x/a"), Some("room@conference.x/bob"), Some("v1"))
        );
        let o = send(&mut room, "<iq from='alice@x/a' to='room@conference.x/nobody' type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>");
        assert_eq!(error(&o), "item-not-found");
    }

    #[test]
    fn a_visitor_asks_for_voice_and_a_moderator_grants_it() {
        let mut room = open_room();
        send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query></iq>");
        join(&mut room, "bob@x/b", "bob");
        let o = send(&mut room, "<message from='bob@x/b' to='room@conference.x'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field></x></message>");
        let request = to(&o, "alice@x/a")[0];
        let form = Form::parse(request.get_child("x", crate::forms::NS).unwrap()).unwrap();
        assert_eq!(form.single("muc#roomnick"), Some("bob"));
        assert_eq!(form.single("muc#jid"), Some("bob@x"));
        let o = send(&mut room, "<message from='alice@x/a' to='room@conference.x'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#roomnick'><value>bob</value></field><field var='muc#request_allow'><value>true</value></field></x></message>");
        assert_eq!(item(to(&o, "bob@x/b")[0]).attr("role"), Some("participant"));
    }

    #[test]
    fn a_nick_the_service_maps_is_announced_with_210() {
        let mut room = open_room();
        // RFC 8266 §2.2: inner runs of spaces become one.
        let o = join(&mut room, "bob@x/b", "bob   smith");
        let own = to(&o, "bob@x/b")[1];
        assert_eq!(codes(own), ["210", "110"]);
        assert_eq!(own.attr("from"), Some("room@conference.x/bob smith"));
    }

    #[test]
    fn members_of_a_private_room_read_its_member_list_but_not_its_bans() {
        let mut room = open_room();
        send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_whois'><value>anyone</value></field></x></query></iq>");
        send(&mut room, "<iq from='alice@x/a' to='room@conference.x' type='set' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@x' affiliation='member'/></query></iq>");
        let list = |room: &mut Room, a: &str| {
            send(room, &format!("<iq from='bob@x/b' to='room@conference.x' type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='{a}'/></query></iq>"))
        };
        let o = list(&mut room, "owner");
        let q = o.out[0].get_child("query", NS_ADMIN).unwrap();
        assert_eq!(
            q.get_child("item", NS_ADMIN).unwrap().attr("jid"),
            Some("alice@x")
        );
        assert_eq!(error(&list(&mut room, "outcast")), "forbidden");
    }

    #[test]
    fn history_by_seconds_and_since() {
        let mut room = open_room();
        let at = |room: &mut Room, ms: i64, id: &str| {
            let xml = format!("<message from='alice@x/a' to='room@conference.x' type='groupchat' id='{id}'><body>{id}</body></message>");
            let el = xmppd_xml::parse_fragment(&xml, NS_CLIENT).unwrap();
            room.handle(&Stanza::parse(el).unwrap(), ms);
        };
        at(&mut room, 1_000_000, "old");
        at(&mut room, 1_100_000, "new");
        let bodies = |o: &Outcome| -> Vec<String> {
            o.out
                .iter()
                .filter(|m| m.has_child("body", NS_CLIENT))
                .map(|m| m.attr("id").unwrap().to_string())
                .collect()
        };
        let el = xmppd_xml::parse_fragment("<presence from='bob@x/b' to='room@conference.x/bob'><x xmlns='http://jabber.org/protocol/muc'><history seconds='50'/></x></presence>", NS_CLIENT).unwrap();
        let o = room.handle(&Stanza::parse(el).unwrap(), 1_120_000);
        assert_eq!(bodies(&o), ["new"]);
        // 1000 s after the epoch: both are newer.
        let el = xmppd_xml::parse_fragment("<presence from='carol@x/c' to='room@conference.x/carol'><x xmlns='http://jabber.org/protocol/muc'><history since='1970-01-01T00:16:40Z'/></x></presence>", NS_CLIENT).unwrap();
        let o = room.handle(&Stanza::parse(el).unwrap(), 1_120_000);
        assert_eq!(bodies(&o), ["old", "new"]);
    }

    #[test]
    fn xep_0082_timestamps_parse() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601("2002-09-10T23:08:25.123Z"),
            Some(1_031_699_305)
        );
        assert_eq!(
            parse_iso8601("2002-09-10T23:08:25+01:00"),
            Some(1_031_695_705)
        );
        assert_eq!(parse_iso8601("yesterday"), None);
    }
}
