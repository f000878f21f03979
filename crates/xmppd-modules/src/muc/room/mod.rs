//! One room of XEP-0045 as a state machine without I/O: a stanza in, the stanzas to send
//! and the changes to store out. The room's task (`actor.rs`) does the routing and storage,
//! so everything here is tested without a server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use xmppd_core::{BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition};

use super::config::{self, AllowPm, RoomConfig, Whois};
use super::nick;
use crate::forms::{Form, FormKind};

mod admin;
mod messages;
mod operator;
#[cfg(test)]
mod tests;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// §7.4 (since 1.31): reflected messages keep their id.
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
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
/// Invitations in one message, and invitations remembered so that only those can be
/// declined (the oldest is forgotten).
const MAX_INVITES: usize = 10;
const MAX_PENDING_INVITES: usize = 256;
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
    /// Where the service's public logs are (`…/muc-logs/`), for `muc#roominfo_logs`; None
    /// without an HTTP listener.
    pub logs_url: Option<std::sync::Arc<str>>,
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
    /// A line for the public log: the room is logged (`muc#roomconfig_enablelogging`).
    Logged(xmppd_storage::LogLine),
    Destroyed,
}

#[derive(Debug)]
pub struct Fanned {
    /// Sent after the first `before` elements of [`Outcome::out`].
    pub before: usize,
    pub stanza: Element,
    /// The full JIDs it goes to.
    pub to: Arc<[Jid]>,
}

/// Every session in the room (full JID → nick key), and the list of them a message to
/// everyone goes to, made once per change in who is here rather than once per message (a
/// room of a thousand cloned and parsed a thousand JIDs per message). Read through
/// `Deref`; every change goes through a method here, which drops the list.
#[derive(Debug, Default)]
struct Sessions {
    keys: HashMap<String, String>,
    everyone: OnceLock<Arc<[Jid]>>,
}

impl std::ops::Deref for Sessions {
    type Target = HashMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.keys
    }
}

impl Sessions {
    fn insert(&mut self, full: String, key: String) {
        self.everyone.take();
        self.keys.insert(full, key);
    }

    fn remove(&mut self, full: &str) -> Option<String> {
        self.everyone.take();
        self.keys.remove(full)
    }

    fn clear(&mut self) {
        self.everyone.take();
        self.keys.clear();
    }

    fn everyone(&self) -> Arc<[Jid]> {
        let list = || self.keys.keys().filter_map(|s| Jid::new(s).ok()).collect();
        self.everyone.get_or_init(list).clone()
    }
}

/// Full JIDs as [`Fanned::to`] holds them.
fn recipients(sessions: Vec<String>) -> Arc<[Jid]> {
    sessions.iter().filter_map(|s| Jid::new(s).ok()).collect()
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
    sessions: Sessions,
    history: VecDeque<(i64, Element)>,
    limits: Limits,
    /// The time of the stanza being handled (Unix milliseconds).
    now_ms: i64,
    /// Iqs forwarded to occupants, by the id the room gave them.
    forwards: VecDeque<(String, Forwarded)>,
    next_forward: u64,
    /// `(invitee, inviter)` bare JIDs of invitations sent and not declined.
    invited: VecDeque<(String, String)>,
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
            sessions: Sessions::default(),
            history: history.into(),
            limits,
            now_ms: 0,
            forwards: VecDeque::new(),
            next_forward: 0,
            invited: VecDeque::new(),
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
        self.stamp_occupant_id(&mut p, &subject.id);
        p
    }

    /// XEP-0421 §4: one occupant id, ours (what the sender put there is replaced), and
    /// none where the room has them off (then clients ignore any, as the room does not
    /// announce the feature).
    fn stamp_occupant_id(&self, el: &mut Element, id: &str) {
        el.remove_children("occupant-id", NS_OCCUPANT_ID);
        if self.config.occupant_id {
            el.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", id));
        }
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
                        to: recipients(to),
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
        if !existing {
            let occ = &self.occupants[&key];
            self.broadcast_presence(o, occ, false, &[], None, &ItemInfo::default());
        }
        let mut codes = vec![];
        if self.created {
            codes.push(201);
        }
        if modified {
            codes.push(210);
        }
        self.created = false;
        self.send_state(o, stanza, &f, &key, codes);
        Ok(())
    }

    /// What a session that enters gets (§7.2.2): the others' presence, its own with `codes`
    /// (and 100, 170, 110 where they apply), the history it asked for, the subject last.
    fn send_state(
        &self,
        o: &mut Outcome,
        stanza: &Stanza,
        f: &str,
        key: &str,
        mut codes: Vec<u16>,
    ) {
        let occ = &self.occupants[key];
        let with_jid = self.sees_jids(occ);
        for (k, other) in &self.occupants {
            if k != key && self.config.broadcasts(other.role.as_str()) {
                let info = ItemInfo::default();
                o.out
                    .push(self.presence_for(other, f, with_jid, false, &[], &info));
            }
        }
        if self.config.whois == Whois::Anyone {
            codes.insert(0, 100);
        }
        if self.config.logging {
            codes.insert(usize::from(self.config.whois == Whois::Anyone), 170);
        }
        codes.push(110);
        o.out
            .push(self.presence_for(occ, f, true, false, &codes, &ItemInfo::default()));
        self.send_history(o, stanza, f);
        // §7.2.15: the subject comes last, empty when none was set.
        let mut subject = self.subject.clone().unwrap_or_else(|| {
            Element::new("message", NS_CLIENT)
                .with_attr("type", "groupchat")
                .with_attr("from", self.jid.as_str())
                .with_child(Element::new("subject", NS_CLIENT))
        });
        subject.set_attr("to", f);
        o.out.push(subject);
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
            if stanza.element().has_child("x", NS_MUC) {
                // A client that thinks it is not in the room (after a reconnect) joins
                // again: the others hear the update, it gets the whole state again.
                self.broadcast_presence(o, occ, false, &[], None, &ItemInfo::default());
                self.send_state(o, stanza, from.as_str(), &old_key, Vec::new());
            } else {
                self.broadcast_presence(o, occ, false, &[], Some(&[]), &ItemInfo::default());
            }
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
