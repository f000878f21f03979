//! A room's task: takes the stanzas queued for one room in order, runs them through the
//! room's state machine, stores what changed and delivers what it sends.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use xmppd_core::{ns, BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition};
use xmppd_server::metrics::Metrics;
use xmppd_server::registry::{Ctx, ServerHandle};
use xmppd_storage::{StoredAffiliation, StoredRoom};

use super::config::RoomConfig;
use super::room::{Affiliation, AffiliationEntry, Change, Fanned, Limits, Outcome, Room};
use super::{Command, Creators, Input, Shared};
use crate::forms::{Form, FormKind};

/// Counts the task in the metrics while it runs (whichever way it ends).
struct Counted {
    metrics: Arc<Metrics>,
    occupants: i64,
}

impl Counted {
    fn new(metrics: Arc<Metrics>) -> Counted {
        metrics.muc_rooms_active.inc();
        Counted {
            metrics,
            occupants: 0,
        }
    }

    fn occupants(&mut self, now: usize) {
        let now = now as i64;
        self.metrics.muc_occupants.inc_by(now - self.occupants);
        self.occupants = now;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.muc_rooms_active.dec();
        self.metrics.muc_occupants.dec_by(self.occupants);
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    name: String,
    mut rx: mpsc::Receiver<Input>,
    server: ServerHandle,
) {
    let Some(mut counted) = server.upgrade().map(|s| Counted::new(s.metrics.clone())) else {
        return;
    };
    let mut room: Option<Room> = None;
    // Whether the room is in storage (it is persistent, or was loaded from there).
    let mut stored = false;
    let mut loaded = false;
    let mut summary = super::Summary::default();
    while let Some(input) = rx.recv().await {
        let Some(state) = server.upgrade() else {
            return;
        };
        let mut cx = state.router.context();
        let mut created = None;
        if room.is_none() {
            let limits = Limits {
                secret: Arc::from(state.secret.as_slice()),
                ..shared.limits.clone()
            };
            if !loaded {
                loaded = true;
                room = load(&cx, &shared, &name, limits.clone()).await;
                stored = room.is_some();
            }
            if room.is_none() {
                room = match &input {
                    Input::Stanza(stanza) => create(&mut cx, &shared, &name, stanza, limits),
                    Input::Command(Command::Create { owners, config }, _) => {
                        let jid = BareJid::new(&format!("{name}@{}", shared.domain)).ok();
                        jid.map(|jid| {
                            let (r, o) = Room::create_configured(
                                jid,
                                owners,
                                config.as_ref().clone(),
                                limits,
                            );
                            created = Some(o);
                            r
                        })
                    }
                    Input::Command(..) => None,
                };
            }
        }
        let (outcome, answer) = match (input, room.as_mut()) {
            (Input::Stanza(stanza), Some(r)) => (Some(r.handle(&stanza, now_ms())), None),
            (Input::Stanza(_), None) => (None, None),
            (Input::Command(command, reply), r) => {
                let (outcome, text) = operate(command, r, created.take(), &shared, &name);
                (outcome, Some((reply, text)))
            }
        };
        if let (Some(r), Some(outcome)) = (room.as_mut(), outcome) {
            save(&cx, &shared, r, &outcome.changes, &mut stored).await;
            deliver(&mut cx, &state.metrics, r, outcome).await;
            counted.occupants(r.occupant_count());
            let listed = r.config.public && !r.is_destroyed() && !r.is_locked();
            // The service's listing reads these; the map is only locked when they change.
            if (listed, r.config.name.as_str()) != (summary.listed, summary.name.as_str()) {
                summary = super::Summary {
                    listed,
                    name: r.config.name.clone(),
                };
                if let Some(e) = shared.rooms().get_mut(&name) {
                    e.summary = summary.clone();
                }
            }
        }
        state.router.apply(cx).await;
        // After the routing: the operator (and the server stopping) learn it was done.
        if let Some((reply, text)) = answer {
            let _ = reply.send(text);
        }
        let done = room
            .as_ref()
            .is_none_or(|r| r.is_empty() || r.is_destroyed());
        if done {
            // Under the map's lock, so no stanza can be queued between the check and the
            // removal: the next one starts a fresh task (which reloads a persistent room).
            let mut rooms = shared.rooms();
            if rx.is_empty() {
                rooms.remove(&name);
                return;
            }
            if room.as_ref().is_some_and(Room::is_destroyed) {
                room = None;
                loaded = true;
            }
        }
    }
}

/// An operator's command on the room (`None`: there is no such room): what the room
/// sends and stores, and the answer.
fn operate(
    command: Command,
    room: Option<&mut Room>,
    created: Option<Outcome>,
    shared: &Shared,
    name: &str,
) -> (Option<Outcome>, Result<String, String>) {
    let jid = format!("{name}@{}", shared.domain);
    let Some(room) = room else {
        return match command {
            Command::ShutDown => (None, Ok(String::new())),
            _ => (None, Err(format!("there is no room {jid}"))),
        };
    };
    match command {
        Command::Info => (None, Ok(room.describe())),
        Command::Create { .. } => match created {
            Some(outcome) => (Some(outcome), Ok(format!("created {jid}"))),
            None => (None, Err(format!("{jid} exists already"))),
        },
        Command::Destroy { reason, venue } => {
            let outcome = room.destroy_by_operator(reason.as_deref(), venue.as_deref());
            (Some(outcome), Ok(format!("destroyed {jid}")))
        }
        Command::ShutDown => (Some(room.shut_down()), Ok(String::new())),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stored element; `None` for the empty string (no subject).
fn parse_xml(xml: &str) -> Option<Element> {
    if xml.trim().is_empty() {
        return None;
    }
    xmppd_xml::parse_fragment(xml, ns::CLIENT)
}

/// A persistent room from storage, or `None` when it is not there.
async fn load(cx: &Ctx<'_>, shared: &Shared, name: &str, limits: Limits) -> Option<Room> {
    let store = &cx.storage().muc;
    let service = shared.domain.as_str();
    let read = async {
        let Some(row) = store.room(service, name).await? else {
            return Ok(None);
        };
        let affiliations = store.affiliations(service, name).await?;
        let history = store
            .history(service, name, shared.config.max_history)
            .await?;
        Ok::<_, xmppd_storage::StorageError>(Some((row, affiliations, history)))
    };
    let (row, affiliations, history) = match read.await {
        Ok(found) => found?,
        Err(e) => {
            tracing::error!(error = %e, room = name, "loading a room failed");
            return None;
        }
    };
    let jid = BareJid::new(&format!("{name}@{service}")).ok()?;
    let base = RoomConfig::new(shared.config.default_history);
    let config = parse_xml(&row.config)
        .and_then(|x| Form::parse(&x).ok())
        .and_then(|f| base.apply(&f, shared.config.max_history).ok())
        .unwrap_or(base);
    let affiliations = affiliations
        .into_iter()
        .filter_map(|a| {
            let entry = AffiliationEntry {
                affiliation: Affiliation::parse(&a.affiliation)?,
                nick: a.nick,
                reason: a.reason,
            };
            Some((a.jid, entry))
        })
        .collect();
    let history = history
        .into_iter()
        .filter_map(|(stamp, xml)| Some((stamp, parse_xml(&xml)?)))
        .collect();
    let subject = parse_xml(&row.subject);
    Some(Room::restore(
        jid,
        config,
        subject,
        affiliations,
        history,
        limits,
    ))
}

/// A new room for the presence that enters it (§10.1.1), if its sender may create one;
/// else the stanza gets its error.
fn create(
    cx: &mut Ctx<'_>,
    shared: &Shared,
    name: &str,
    stanza: &Stanza,
    limits: Limits,
) -> Option<Room> {
    let joins = stanza.kind == xmppd_core::StanzaKind::Presence && stanza.stanza_type().is_empty();
    let from = stanza.from.as_ref()?.to_bare();
    if !joins {
        if stanza.kind != xmppd_core::StanzaKind::Presence {
            cx.bounce(stanza, StanzaErrorCondition::ItemNotFound.into());
        }
        return None;
    }
    let config = &shared.config;
    let admin = config
        .admins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(from.as_str()));
    let allowed = admin
        || match config.create_rooms {
            Creators::Everyone => true,
            Creators::Local => cx.is_local_domain(from.domain().as_str()),
            Creators::Admins => false,
        };
    let refuse = |cx: &mut Ctx<'_>, condition, text: &str| {
        cx.bounce(stanza, StanzaError::new(condition).with_text(text));
        None
    };
    if !allowed {
        return refuse(
            cx,
            StanzaErrorCondition::NotAllowed,
            "you may not create rooms here",
        );
    }
    {
        let mut rooms = shared.rooms();
        let mine = rooms
            .values()
            .filter(|e| e.creator.as_deref() == Some(from.as_str()))
            .count();
        // This room's own entry is in the map already.
        if rooms.len() > config.max_rooms {
            drop(rooms);
            return refuse(
                cx,
                StanzaErrorCondition::ResourceConstraint,
                "too many rooms",
            );
        }
        if mine >= config.max_rooms_per_user && !admin {
            drop(rooms);
            return refuse(
                cx,
                StanzaErrorCondition::PolicyViolation,
                "you have created too many rooms",
            );
        }
        if let Some(e) = rooms.get_mut(name) {
            e.creator = Some(from.to_string());
        }
    }
    let jid = BareJid::new(&format!("{name}@{}", shared.domain)).ok()?;
    Some(Room::create(
        jid,
        &from,
        RoomConfig::new(config.default_history),
        limits,
    ))
}

/// Stores what changed, for rooms that are (or just became) persistent.
async fn save(cx: &Ctx<'_>, shared: &Shared, room: &Room, changes: &[Change], stored: &mut bool) {
    let was_stored = *stored;
    let store = &cx.storage().muc;
    let (service, name) = (
        shared.domain.as_str(),
        room.jid().node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let result = async {
        for change in changes {
            match change {
                Change::Destroyed => {
                    if *stored {
                        store.delete_room(service, name).await?;
                        *stored = false;
                    }
                    store.delete_log(service, name).await?;
                }
                // Temporary rooms are logged too: their occupants were told (170).
                Change::Logged(line) => {
                    let days = i64::from(shared.config.log_days);
                    let keep_since = if days == 0 {
                        i64::MIN
                    } else {
                        line.stamp - days * 86_400
                    };
                    store.append_log(service, name, line, keep_since).await?;
                }
                Change::Room if room.config.persistent => {
                    store.put_room(service, name, &row(room)).await?;
                    if !*stored {
                        // Newly persistent: what was only in memory goes to storage too.
                        for (jid, e) in room.affiliations() {
                            store
                                .set_affiliation(service, name, &stored_affiliation(jid, Some(e)))
                                .await?;
                        }
                        *stored = true;
                    }
                }
                Change::Room if *stored => {
                    store.delete_room(service, name).await?;
                    *stored = false;
                }
                Change::Room => {}
                Change::Affiliation(jid) if *stored => {
                    let a = stored_affiliation(jid, room.affiliation_entry(jid));
                    store.set_affiliation(service, name, &a).await?;
                }
                Change::History(stamp, el) if *stored => {
                    let xml = el.to_xml_in(ns::CLIENT);
                    store
                        .push_history(service, name, *stamp, &xml, room.config.history_length)
                        .await?;
                }
                Change::Affiliation(_) | Change::History(..) => {}
            }
        }
        Ok::<_, xmppd_storage::StorageError>(())
    };
    if let Err(e) = result.await {
        tracing::error!(error = %e, room = name, "storing a room failed");
    }
    if was_stored != *stored {
        if let Some(server) = cx.server_handle().upgrade() {
            let persistent = &server.metrics.muc_rooms_persistent;
            if *stored {
                persistent.inc();
            } else {
                persistent.dec();
            }
        }
    }
}

fn row(room: &Room) -> StoredRoom {
    StoredRoom {
        name: room.config.name.clone(),
        public: room.config.public,
        config: room.config.to_form(FormKind::Submit).to_element().to_xml(),
        subject: room
            .subject()
            .map(|s| s.to_xml_in(ns::CLIENT))
            .unwrap_or_default(),
    }
}

fn stored_affiliation(jid: &str, e: Option<&AffiliationEntry>) -> StoredAffiliation {
    StoredAffiliation {
        jid: jid.to_string(),
        affiliation: e
            .map_or(Affiliation::None, |e| e.affiliation)
            .as_str()
            .to_string(),
        nick: e.and_then(|e| e.nick.clone()),
        reason: e.and_then(|e| e.reason.clone()),
    }
}

/// Delivers the room's stanzas: straight into local sessions (through their delivery
/// filters), routed otherwise. A local occupant session that no longer exists is a ghost:
/// it is removed from the room, and the others hear it left.
async fn deliver(cx: &mut Ctx<'_>, metrics: &Metrics, room: &mut Room, mut outcome: Outcome) {
    // Each round removes the ghosts it found, so this ends.
    loop {
        let mut ghosts = Vec::new();
        let mut fanned = std::mem::take(&mut outcome.fanned).into_iter().peekable();
        for (i, el) in outcome.out.into_iter().enumerate() {
            while let Some(f) = fanned.next_if(|f| f.before <= i) {
                fan_out(cx, metrics, f, &mut ghosts).await;
            }
            let Ok(stanza) = Stanza::parse(el) else {
                continue;
            };
            if let Some(to) = &stanza.to {
                deliver_one(cx, &stanza, to, None, &mut ghosts).await;
            }
        }
        for f in fanned {
            fan_out(cx, metrics, f, &mut ghosts).await;
        }
        ghosts.retain(|g| room.session_jids().any(|s| s == g));
        ghosts.sort_unstable();
        ghosts.dedup();
        if ghosts.is_empty() {
            return;
        }
        outcome = Outcome::default();
        for g in ghosts {
            outcome.out.extend(room.remove_session(&g).out);
        }
    }
}

/// One stanza to `to`: into the local session (`data`: its bytes when already
/// serialised), or routed. A local full JID without a session is noted as a ghost.
async fn deliver_one(
    cx: &mut Ctx<'_>,
    stanza: &Stanza,
    to: &Jid,
    data: Option<Bytes>,
    ghosts: &mut Vec<String>,
) {
    if cx.is_local_domain(to.domain().as_str()) {
        if let Ok(full) = to.try_as_full() {
            match cx.sessions().get(full) {
                Some(session) => {
                    cx.deliver_encoded(&session, stanza, to, data.as_ref())
                        .await;
                }
                None => ghosts.push(full.to_string()),
            }
            return;
        }
    }
    let mut remote = stanza.clone();
    remote.set_to(to.clone());
    cx.route(remote);
}

/// A stanza for many occupants' sessions, serialised once (see [`Ctx::fan_out`]).
async fn fan_out(cx: &mut Ctx<'_>, metrics: &Metrics, f: Fanned, ghosts: &mut Vec<String>) {
    let Ok(stanza) = Stanza::parse(f.stanza) else {
        return;
    };
    if stanza.kind == xmppd_core::StanzaKind::Message {
        metrics.muc_messages_out.inc_by(f.to.len() as u64);
    }
    let gone = cx.fan_out(stanza, &f.to, false).await;
    ghosts.extend(gone.iter().map(ToString::to_string));
}
