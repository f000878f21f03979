//! Multi-User Chat (XEP-0045), with occupant ids (XEP-0421) and self-ping answered by the
//! service (XEP-0410): a service at `conference.<domain>` for every served domain.
//!
//! The host handler only finds a room's task and queues the stanza for it; each active room
//! is one task (`actor.rs`) that owns its state (`room.rs`), so rooms never wait for each
//! other. A room's task ends when the room is empty; a persistent room is read back from
//! storage by the next stanza for it, never at start-up.

mod actor;
mod commands;
pub mod config;
mod logs;
pub mod nick;
pub mod room;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use xmppd_core::{Element, Jid, Stanza, StanzaError, StanzaErrorCondition};
use xmppd_server::registry::{
    Ctx, DiscoProvider, EventKind, Host, IqTarget, Module, On, Registry, Spec,
};

use crate::rsm;
use room::{Limits, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC, NS_SELF_PING, NS_STABLE_ID};

/// Who may create rooms.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Creators {
    /// Anyone who can reach the service, remote users included.
    Everyone,
    /// Accounts of the served domains.
    #[default]
    Local,
    /// Only the JIDs in `admins`.
    Admins,
}

/// `[modules.muc]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MucConfig {
    /// The service is `<subdomain>.<domain>` for every served domain.
    pub subdomain: String,
    pub create_rooms: Creators,
    /// Bare JIDs of the service's administrators (they may always create rooms).
    pub admins: Vec<String>,
    /// Most rooms active at once per service; creating one more is refused.
    pub max_rooms: usize,
    /// Most rooms one account may have created that are active at once.
    pub max_rooms_per_user: usize,
    /// Most occupants of one room (owners and admins may still enter a full room).
    pub max_occupants: usize,
    /// History messages a new room keeps and sends on join.
    pub default_history: usize,
    /// Most history messages any room keeps (the cap of `muc#maxhistoryfetch`).
    pub max_history: usize,
    /// Longest nickname, in characters.
    pub max_nick_length: usize,
    /// Messages per second one occupant may send (bursts of twice that).
    pub messages_per_second: f64,
    /// Stanzas waiting for one room's task; beyond it senders get `resource-constraint`.
    pub room_queue: usize,
    /// Where the HTTP listeners serve the public logs of rooms with logging on.
    pub logs_path: String,
    /// Days a line of a public log is kept (0: for ever).
    pub log_days: u32,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            subdomain: "conference".into(),
            create_rooms: Creators::Local,
            admins: Vec::new(),
            max_rooms: 10_000,
            max_rooms_per_user: 100,
            max_occupants: 10_000,
            default_history: 20,
            max_history: 200,
            max_nick_length: 64,
            messages_per_second: 5.0,
            room_queue: 1024,
            logs_path: "/muc-logs".into(),
            log_days: 90,
        }
    }
}

pub struct Muc;

impl Module for Muc {
    const NAME: &'static str = "muc";
    const SPECS: &'static [Spec] = &[
        Spec::xep("XEP-0045", "1.35.5").note("public room logs over HTTP"),
        Spec::xep("XEP-0059", "1.0").note("public rooms and pubsub items"),
        Spec::xep("XEP-0249", "1.2").note("direct invitations pass through"),
        Spec::xep("XEP-0410", "1.1.0"),
        Spec::xep("XEP-0421", "1.0.1"),
    ];
    type Config = MucConfig;

    fn register(config: MucConfig, r: &mut Registry) -> Result<(), String> {
        if config.subdomain.is_empty() || config.subdomain.contains(['/', '@']) {
            return Err("subdomain must be a DNS label such as \"conference\"".into());
        }
        if config.max_occupants == 0 || config.room_queue == 0 || config.max_nick_length == 0 {
            return Err("max_occupants, room_queue and max_nick_length must be positive".into());
        }
        if config.messages_per_second.is_nan() || config.messages_per_second <= 0.0 {
            return Err("messages_per_second must be positive".into());
        }
        if !config.logs_path.starts_with('/') || config.logs_path.len() < 2 {
            return Err("logs_path must be a path such as \"/muc-logs\"".into());
        }
        for admin in &config.admins {
            xmppd_core::BareJid::new(admin)
                .map_err(|_| format!("admins: {admin:?} is not a JID"))?;
        }
        let limits = Limits {
            max_occupants: config.max_occupants,
            max_history: config.max_history,
            max_nick_chars: config.max_nick_length,
            messages_per_second: config.messages_per_second,
            // Each room's task puts the server's secret here (it is read at start-up,
            // after the modules registered).
            secret: Arc::from(&[][..]),
            logs_url: None,
        };
        let web = logs::base_url(r.server_config());
        let config = Arc::new(config);
        let mut services = HashMap::new();
        let mut shared = BTreeMap::new();
        for domain in r.server_config().server.domains.clone() {
            let host = format!("{}.{}", config.subdomain, domain).to_ascii_lowercase();
            let logs_url = web.as_ref().map(|base| {
                Arc::from(format!("{}{}/", base.for_domain(&domain), config.logs_path))
            });
            let service = Arc::new(Shared {
                domain: host.clone(),
                config: config.clone(),
                limits: Limits {
                    logs_url,
                    ..limits.clone()
                },
                rooms: Mutex::new(HashMap::new()),
            });
            r.host(&host, Arc::new(Service(service.clone())));
            shared.insert(host.clone(), service);
            services.insert(domain.to_ascii_lowercase(), host);
        }
        r.disco_provider(On::Server, Arc::new(Listing(services)));
        let services = Arc::new(shared);
        r.http_pages(
            config.logs_path.clone(),
            Arc::new(logs::LogPages(services.clone())),
        );
        r.admin_command("room", Arc::new(commands::RoomCommand(services.clone())));
        r.on(
            EventKind::Started,
            0,
            Arc::new(commands::Census(services.clone())),
        );
        r.on(
            EventKind::ShuttingDown,
            0,
            Arc::new(commands::Farewell(services)),
        );
        Ok(())
    }
}

/// Lists each domain's MUC service in its disco#items (clients look there).
struct Listing(HashMap<String, String>);

#[async_trait]
impl DiscoProvider for Listing {
    async fn items(
        &self,
        _: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: Option<&str>,
        _: Option<&Jid>,
    ) -> Vec<Element> {
        match (target, node) {
            (IqTarget::Server(domain), None) => self
                .0
                .get(domain)
                .map(|host| {
                    Element::new("item", NS_DISCO_ITEMS)
                        .with_attr("jid", host.as_str())
                        .with_attr("name", "Chatrooms")
                })
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn node_info(
        &self,
        _: &mut Ctx<'_>,
        _: IqTarget<'_>,
        _: &str,
        _: Option<&Jid>,
    ) -> Option<Result<Element, StanzaError>> {
        None
    }
}

/// What the service knows of an active room without asking its task.
#[derive(Clone, Debug, Default)]
struct Summary {
    /// Listed in disco#items: public and not locked.
    listed: bool,
    name: String,
}

/// What a room's task takes from its queue.
enum Input {
    Stanza(Stanza),
    /// From the operator (`xmppd room …`, or the server stopping), with where the answer
    /// goes.
    Command(Command, oneshot::Sender<Result<String, String>>),
}

enum Command {
    Info,
    Create {
        owners: Vec<xmppd_core::BareJid>,
        config: Box<config::RoomConfig>,
    },
    Destroy {
        reason: Option<String>,
        venue: Option<String>,
    },
    /// The server is stopping: occupants get status 332 and the task ends.
    ShutDown,
}

struct Entry {
    tx: mpsc::Sender<Input>,
    /// The account that created it, for `max_rooms_per_user`.
    creator: Option<String>,
    summary: Summary,
}

struct Shared {
    domain: String,
    config: Arc<MucConfig>,
    limits: Limits,
    /// Active rooms by name (the node of the room JID). Locked only to look up or change
    /// an entry, never across an await.
    rooms: Mutex<HashMap<String, Entry>>,
}

impl Shared {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `input` for a room's task, starting the task if the room is not active.
    /// Never waits: the input comes back (boxed: it is the rare path) when the room's
    /// queue is full.
    fn queue(self: &Arc<Self>, name: &str, input: Input, cx: &Ctx<'_>) -> Result<(), Box<Input>> {
        let mut rooms = self.rooms();
        let input = match rooms.get(name) {
            None => input,
            Some(e) => match e.tx.try_send(input) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(input)) => return Err(Box::new(input)),
                // The task is gone (it cannot end with input queued, but a panic could).
                Err(mpsc::error::TrySendError::Closed(input)) => input,
            },
        };
        let (tx, rx) = mpsc::channel(self.config.room_queue);
        let _ = tx.try_send(input);
        rooms.insert(
            name.to_string(),
            Entry {
                tx,
                creator: None,
                summary: Summary::default(),
            },
        );
        drop(rooms);
        tokio::spawn(actor::run(
            self.clone(),
            name.to_string(),
            rx,
            cx.server_handle(),
        ));
        Ok(())
    }
}

/// One MUC service (the host of `conference.<domain>`).
struct Service(Arc<Shared>);

#[async_trait]
impl Host for Service {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza) {
        let Some(to) = stanza.to.clone() else {
            return;
        };
        match to.node() {
            None => self.to_service(cx, &stanza).await,
            Some(room) => self.to_room(cx, room.as_str(), stanza),
        }
    }
}

impl Service {
    /// Queues a stanza for a room's task (see [`Shared::queue`]); a room whose queue is
    /// full answers `resource-constraint`.
    fn to_room(&self, cx: &mut Ctx<'_>, name: &str, stanza: Stanza) {
        let Err(refused) = self.0.queue(name, Input::Stanza(stanza), cx) else {
            return;
        };
        if let Input::Stanza(stanza) = *refused {
            let error = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_text("the room is busy; try again");
            cx.bounce(&stanza, error);
        }
    }

    /// Stanzas to the service itself: disco (§6.1–§6.3); anything else is not served.
    async fn to_service(&self, cx: &mut Ctx<'_>, stanza: &Stanza) {
        if !stanza.is_iq_request() {
            if stanza.kind == xmppd_core::StanzaKind::Message {
                cx.bounce(stanza, StanzaErrorCondition::ServiceUnavailable.into());
            }
            return;
        }
        let payload = stanza.iq_payload();
        let get = stanza.stanza_type() == "get";
        let result = match payload.map(|p| (p.ns(), p.name(), p.attr("node"))) {
            Some((NS_DISCO_INFO, "query", None)) if get => Ok(service_info()),
            Some((NS_DISCO_ITEMS, "query", None)) if get => {
                self.public_rooms(cx, payload.expect("matched")).await
            }
            _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        };
        match result {
            Ok(q) => cx.reply(stanza.iq_result(Some(q))),
            Err(e) => cx.bounce(stanza, e),
        }
    }

    /// §6.3: the public rooms, stored and active, by room JID, in pages (XEP-0059).
    async fn public_rooms(
        &self,
        cx: &mut Ctx<'_>,
        query: &Element,
    ) -> Result<Element, StanzaError> {
        let set = rsm::Query::find_in(query)
            .map_err(|e| StanzaError::new(StanzaErrorCondition::BadRequest).with_text(e.0))?;
        let mut rooms: BTreeMap<String, String> =
            match cx.storage().muc.public_rooms(&self.0.domain).await {
                Ok(stored) => stored.into_iter().collect(),
                Err(e) => return Err(crate::storage_error(e)),
            };
        for (name, entry) in self.0.rooms().iter() {
            if entry.summary.listed {
                rooms.insert(name.clone(), entry.summary.name.clone());
            } else {
                // Active state wins over what is stored (a room made hidden since).
                rooms.remove(name);
            }
        }
        let keys: Vec<String> = rooms
            .keys()
            .map(|n| format!("{n}@{}", self.0.domain))
            .collect();
        let names: Vec<&String> = rooms.values().collect();
        let mut q = Element::new("query", NS_DISCO_ITEMS);
        let (range, set_el) = match &set {
            Some(set) => {
                let page = set
                    .page(&keys, MAX_ITEMS)
                    .map_err(|_| StanzaError::new(StanzaErrorCondition::ItemNotFound))?;
                (page.range.clone(), Some(page.to_element()))
            }
            None => (0..keys.len().min(MAX_ITEMS), None),
        };
        for i in range {
            let mut item = Element::new("item", NS_DISCO_ITEMS).with_attr("jid", keys[i].as_str());
            if !names[i].is_empty() {
                item.set_attr("name", names[i].as_str());
            }
            q.push_child(item);
        }
        if let Some(set_el) = set_el {
            q.push_child(set_el);
        }
        Ok(q)
    }
}

/// Most rooms in one disco#items answer.
const MAX_ITEMS: usize = 100;

fn service_info() -> Element {
    let mut q = Element::new("query", NS_DISCO_INFO).with_child(
        Element::new("identity", NS_DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", "Chatrooms"),
    );
    for f in [
        NS_MUC,
        NS_DISCO_INFO,
        NS_DISCO_ITEMS,
        rsm::NS,
        // Not NS_OCCUPANT_ID: owners may turn occupant ids off, and XEP-0421 §4 lists it
        // on the service only when every room has them.
        NS_SELF_PING,
        NS_STABLE_ID,
    ] {
        q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
    }
    q
}
