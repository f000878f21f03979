//! The module registry: the one API through which every feature plugs into the server.
//!
//! A feature is a [`Module`]: a name, a typed `[modules.NAME]` config section and one
//! `register` function. What it registers (iq handlers, disco entries, stream features,
//! nonzas, filters, event handlers, stanza interceptors, hosts, session extensions) is
//! frozen into [`Hooks`] before the listeners open, so the hot path reads it without locks.
//!
//! Handlers never route by themselves: they get a [`Ctx`] and record what should be routed
//! ([`Ctx::route`], [`Ctx::bounce`]); the router applies those effects after the handler
//! returned, so no handler can hold an account lock while routing. See
//! `docs/architecture.md` for a worked example.

mod context;
mod extensions;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use xmppd_core::{BareJid, Element, Jid, Stanza, StanzaError, StanzaKind};

use crate::router::SessionHandle;
pub use context::{Ctx, Effect, ServerHandle};
pub use extensions::{ExtKey, Extensions};

/// The answer to an iq request: a result payload (or none), or an error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// What an iq handler or disco entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum On {
    /// The server domain itself.
    Server,
    /// A local account's bare JID, answered by the server on its behalf (RFC 6121 §1).
    Account,
}

/// Who an iq request is addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqTarget<'a> {
    Server(&'a str),
    Account(&'a BareJid),
}

impl IqTarget<'_> {
    pub fn on(&self) -> On {
        match self {
            IqTarget::Server(_) => On::Server,
            IqTarget::Account(_) => On::Account,
        }
    }
}

/// Answers iq requests (get and set) whose payload it was registered for.
#[async_trait]
pub trait IqHandler: Send + Sync {
    async fn handle(&self, cx: &mut Ctx<'_>, target: IqTarget<'_>, iq: &Stanza) -> IqResult;
}

/// Answers iq requests on a stream that has not authenticated yet (in-band registration).
#[async_trait]
pub trait PreAuthIq: Send + Sync {
    async fn handle(&self, cx: &mut Ctx<'_>, domain: &str, peer: IpAddr, iq: &Stanza) -> IqResult;
}

/// When a stream feature is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before authentication, beside the SASL mechanisms.
    PreAuth,
    /// After authentication, beside resource binding.
    PostAuth,
}

/// What a stream feature provider may look at.
pub struct StreamInfo<'a> {
    pub domain: &'a str,
    pub secure: bool,
    /// Everything registered, for a feature describing the server (its XEP-0115 caps).
    pub hooks: &'a Hooks,
}

/// Builds one stream feature element, or none for this stream.
pub type StreamFeature = Box<dyn Fn(&StreamInfo<'_>) -> Option<Element> + Send + Sync>;

/// A top-level element other than a stanza, accepted from a bound session (for example
/// XEP-0352's `<active/>`). Handled before the next element is read (RFC 6120 §10.1).
pub trait Nonza: Send + Sync {
    fn handle(&self, cx: &Ctx<'_>, session: &Arc<SessionHandle>, el: &Element);
}

/// Where a filter sits on a stanza's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// Leaving a sender (any stanza the router routes).
    Outbound,
    /// Arriving for a local account (`to` is its bare or full JID).
    Inbound,
    /// About to be queued for one session of the recipient.
    Deliver,
}

/// What a filter decides about one stanza.
#[derive(Debug)]
pub enum Verdict {
    Allow,
    /// Not delivered, without a word (a blocked contact's presence; a stanza held back).
    Drop,
    /// Refused with an error to the sender.
    Reject(StanzaError),
    /// Taken by the filter to be delivered later (CSI): counts as delivered.
    Held,
}

#[async_trait]
pub trait Filter: Send + Sync {
    /// `point` is where it was called (a filter may be registered at several);
    /// `session` is the recipient session at [`Point::Deliver`], else none.
    async fn check(
        &self,
        cx: &Ctx<'_>,
        stanza: &Stanza,
        to: &Jid,
        point: Point,
        session: Option<&Arc<SessionHandle>>,
    ) -> Verdict;
}

/// Something that happened, for the modules that care.
pub enum Event<'a> {
    /// A resource was bound.
    SessionBound(&'a Arc<SessionHandle>),
    /// A session sent its first available presence.
    InitialPresence(&'a Arc<SessionHandle>),
    /// A session is closing; it is still in the session table.
    SessionClosing(&'a Arc<SessionHandle>),
    /// A message to a local account that no session took (RFC 6121 §8.5.2.2.1): handlers run
    /// in priority order until one returns [`Handled::Stop`] (privacy, then offline storage).
    Undelivered {
        stanza: &'a Stanza,
        user: &'a BareJid,
    },
    /// A message was queued for these sessions of a local account (not a room's groupchat
    /// copies, see [`Ctx::fan_out`]).
    Delivered {
        stanza: &'a Stanza,
        user: &'a BareJid,
        sessions: &'a [Arc<SessionHandle>],
    },
    /// Presence from `from` reached a local account `user`: available or unavailable (from
    /// one of its own resources, as broadcast, or anyone else), or a subscription stanza
    /// once the change it made is saved. For PEP's last items and XEP-0115 caps.
    PresenceReceived {
        from: &'a Jid,
        user: &'a BareJid,
        presence: &'a Element,
    },
    /// An account is about to be deleted: its stored data is still there.
    AccountRemoving(&'a BareJid),
    /// An account was deleted: forget what is cached about it.
    AccountRemoved(&'a BareJid),
    /// The server started: storage is open, listeners not yet taking connections. For a
    /// module's start-up reading (MUC counts its stored rooms).
    Started,
    /// The server is stopping; sessions are still connected, and what handlers route now
    /// is written to them before their streams end (MUC's status 332).
    ShuttingDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    SessionBound,
    InitialPresence,
    SessionClosing,
    Undelivered,
    Delivered,
    PresenceReceived,
    AccountRemoving,
    AccountRemoved,
    Started,
    ShuttingDown,
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::SessionBound(_) => EventKind::SessionBound,
            Event::InitialPresence(_) => EventKind::InitialPresence,
            Event::SessionClosing(_) => EventKind::SessionClosing,
            Event::Undelivered { .. } => EventKind::Undelivered,
            Event::Delivered { .. } => EventKind::Delivered,
            Event::PresenceReceived { .. } => EventKind::PresenceReceived,
            Event::AccountRemoving(_) => EventKind::AccountRemoving,
            Event::AccountRemoved(_) => EventKind::AccountRemoved,
            Event::Started => EventKind::Started,
            Event::ShuttingDown => EventKind::ShuttingDown,
        }
    }
}

/// Whether later handlers of the same event still run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Continue,
    Stop,
}

#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn on(&self, cx: &mut Ctx<'_>, event: &Event<'_>) -> Handled;
}

/// Where a stanza interceptor takes stanzas over from the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Intercept {
    /// As a bound session sends it (after its stream stamped `from`).
    FromSession,
    /// As it arrives for a local account, after the inbound filters.
    ToAccount,
}

/// Context of an intercepted stanza.
pub enum Via<'a> {
    Session(&'a Arc<SessionHandle>),
    /// The local account's JID the stanza is addressed to.
    Account(&'a Jid),
}

/// Takes over every stanza of one kind at one [`Intercept`] point (presence, RFC 6121 §4).
#[async_trait]
pub trait StanzaHandler: Send + Sync {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza, via: Via<'_>);
}

/// Amends the presence a user's session broadcasts (XEP-0153/0398 avatar hashes).
#[async_trait]
pub trait PresenceAmender: Send + Sync {
    async fn amend(&self, cx: &Ctx<'_>, user: &BareJid, presence: &mut Element);
}

/// A subdomain served by a module: MUC, pubsub, a component.
#[async_trait]
pub trait Host: Send + Sync {
    async fn handle(&self, cx: &mut Ctx<'_>, stanza: Stanza);
}

/// What a module adds to service discovery beyond static features: items (the MUC and
/// pubsub services under a domain, an account's PEP nodes) and the info of nodes it owns.
#[async_trait]
pub trait DiscoProvider: Send + Sync {
    /// The `<item/>`s this module lists for `target` at `node` (`None`: the top level).
    async fn items(
        &self,
        cx: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: Option<&str>,
        from: Option<&Jid>,
    ) -> Vec<Element>;

    /// The disco#info `<query/>` of `node` at `target`, or `None` when the node is not this
    /// module's.
    async fn node_info(
        &self,
        cx: &mut Ctx<'_>,
        target: IqTarget<'_>,
        node: &str,
        from: Option<&Jid>,
    ) -> Option<Result<Element, StanzaError>>;
}

/// A disco#info identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    pub name: Option<&'static str>,
}

/// An admin command of a module: `xmppd NAME ARGS…` on the command line, run by the
/// server (through the admin socket while it runs, else by the CLI starting the modules
/// without listeners), so that it goes through the module's own state.
#[async_trait]
pub trait AdminCommand: Send + Sync {
    /// Runs the command; `Ok` is the text to print, `Err` why it failed. `args` are the
    /// words after the command's name, as the admin typed them.
    async fn run(&self, cx: &mut Ctx<'_>, args: &[String]) -> Result<String, String>;
}

/// Pages a module serves on the HTTP listeners (`listen.http`, `listen.https`), read-only:
/// a GET of `PREFIX/REST` is answered by [`HttpPages::get`] with `REST`.
#[async_trait]
pub trait HttpPages: Send + Sync {
    async fn get(&self, cx: &mut Ctx<'_>, rest: &str) -> HttpPage;
}

/// A page's answer: its status (404 for a page that is not there), type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPage {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl HttpPage {
    pub fn not_found(why: &str) -> HttpPage {
        HttpPage {
            status: 404,
            content_type: "text/plain; charset=utf-8",
            body: format!("{why}\n"),
        }
    }
}

/// A specification a module (or the core) implements: the list of supported XEPs in the
/// README and the DOAP file is generated from these, so it says what is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `XEP-0045` or `RFC 6121`.
    pub name: &'static str,
    /// The version implemented (XEPs; empty for RFCs or where it is not tracked).
    pub version: &'static str,
    /// Everything the spec asks of a server is there.
    pub complete: bool,
    /// What is left out, or how it is provided.
    pub note: &'static str,
}

impl Spec {
    pub const fn xep(name: &'static str, version: &'static str) -> Spec {
        Spec {
            name,
            version,
            complete: true,
            note: "",
        }
    }

    pub const fn partial(mut self, note: &'static str) -> Spec {
        self.complete = false;
        self.note = note;
        self
    }

    pub const fn note(mut self, note: &'static str) -> Spec {
        self.note = note;
        self
    }
}

/// A feature module (see the module docs).
pub trait Module {
    /// Its name, and the name of its config section `[modules.NAME]`.
    const NAME: &'static str;
    /// The specifications it implements.
    const SPECS: &'static [Spec] = &[];
    /// Whether it runs when its section does not say `enabled`.
    const ENABLED_BY_DEFAULT: bool = true;
    /// Its settings: every key defaulted, unknown keys refused (`deny_unknown_fields`).
    type Config: DeserializeOwned + Default;
    fn register(config: Self::Config, r: &mut Registry) -> Result<(), String>;
}

/// Errors building the registry, shown to the admin as configuration errors.
#[derive(Debug, thiserror::Error)]
#[error("[modules.{module}]: {message}")]
pub struct RegistryError {
    pub module: String,
    pub message: String,
}

type Prioritised<T> = Vec<(i32, T)>;

/// Handlers keyed by an element's namespace and name, looked up with borrowed strings.
struct ByElement<V>(HashMap<&'static str, HashMap<&'static str, V>>);

impl<V> Default for ByElement<V> {
    fn default() -> Self {
        ByElement(HashMap::new())
    }
}

impl<V> ByElement<V> {
    fn insert(&mut self, ns: &'static str, name: &'static str, v: V) {
        self.0.entry(ns).or_default().insert(name, v);
    }

    fn get(&self, ns: &str, name: &str) -> Option<&V> {
        self.0.get(ns)?.get(name)
    }
}

/// What modules register, while the server is being set up.
pub struct Registry {
    config: crate::config::Config,
    hooks: Hooks,
    extensions: usize,
    loaded: Vec<&'static str>,
    error: Option<RegistryError>,
}

impl Registry {
    pub fn new(config: &crate::config::Config) -> Self {
        Registry {
            config: config.clone(),
            hooks: Hooks {
                iq: HashMap::new(),
                pre_auth_iq: ByElement::default(),
                features: HashMap::new(),
                identities: HashMap::new(),
                stream_features: Vec::new(),
                nonzas: ByElement::default(),
                filters: HashMap::new(),
                events: HashMap::new(),
                intercepts: HashMap::new(),
                amenders: Vec::new(),
                hosts: HashMap::new(),
                disco: HashMap::new(),
                admin_commands: HashMap::new(),
                http_pages: Vec::new(),
                specs: Vec::new(),
            },
            extensions: 0,
            loaded: Vec::new(),
            error: None,
        }
    }

    /// The server's whole configuration, for modules whose settings live outside
    /// `[modules.NAME]` (the `[im]` section predates the registry).
    pub fn server_config(&self) -> &crate::config::Config {
        &self.config
    }

    /// Loads module `M` with its `[modules.NAME]` section, unless that says `enabled = false`.
    pub fn load<M: Module>(&mut self) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        let mut section = self
            .config
            .modules
            .get(M::NAME)
            .cloned()
            .unwrap_or_default();
        let enabled = match section.remove("enabled") {
            None => M::ENABLED_BY_DEFAULT,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => {
                return self.fail(M::NAME, "`enabled` must be true or false".into());
            }
        };
        self.loaded.push(M::NAME);
        if !enabled {
            return self;
        }
        let config = match toml::Value::Table(section).try_into::<M::Config>() {
            Ok(c) => c,
            Err(e) => return self.fail(M::NAME, e.message().to_string()),
        };
        if let Err(message) = M::register(config, self) {
            return self.fail(M::NAME, message);
        }
        self.hooks
            .specs
            .extend(M::SPECS.iter().map(|spec| (M::NAME, *spec)));
        self
    }

    fn fail(&mut self, module: &str, message: String) -> &mut Self {
        self.error = Some(RegistryError {
            module: module.to_string(),
            message,
        });
        self
    }

    /// Answers iq requests to `on` whose payload is `<name xmlns=ns>`.
    pub fn iq(&mut self, on: On, ns: &'static str, name: &'static str, h: Arc<dyn IqHandler>) {
        self.hooks.iq.entry(on).or_default().insert(ns, name, h);
    }

    /// The handler registered so far for `<name xmlns=ns>` at `on`, so that a module loaded
    /// later can wrap it (pubsub unifies private XML bookmarks and vCard avatars with PEP).
    pub fn iq_handler(&self, on: On, ns: &str, name: &str) -> Option<Arc<dyn IqHandler>> {
        self.hooks.iq.get(&on)?.get(ns, name).cloned()
    }

    /// Answers iq requests before authentication.
    pub fn pre_auth_iq(&mut self, ns: &'static str, name: &'static str, h: Arc<dyn PreAuthIq>) {
        self.hooks.pre_auth_iq.insert(ns, name, h);
    }

    pub fn disco_feature(&mut self, on: On, var: &'static str) {
        self.hooks.features.entry(on).or_default().push(var);
    }

    pub fn disco_identity(&mut self, on: On, identity: Identity) {
        self.hooks.identities.entry(on).or_default().push(identity);
    }

    pub fn stream_feature(&mut self, stage: Stage, feature: StreamFeature) {
        self.hooks.stream_features.push((stage, feature));
    }

    pub fn nonza(&mut self, ns: &'static str, name: &'static str, h: Arc<dyn Nonza>) {
        self.hooks.nonzas.insert(ns, name, h);
    }

    /// Adds a filter; higher priorities run first.
    pub fn filter(&mut self, point: Point, priority: i32, f: Arc<dyn Filter>) {
        self.hooks
            .filters
            .entry(point)
            .or_default()
            .push((priority, f));
    }

    /// Adds an event handler; higher priorities run first.
    pub fn on(&mut self, kind: EventKind, priority: i32, h: Arc<dyn EventHandler>) {
        self.hooks
            .events
            .entry(kind)
            .or_default()
            .push((priority, h));
    }

    /// Takes over stanzas of `kind` at `point` (one handler per pair).
    pub fn intercept(&mut self, point: Intercept, kind: StanzaKind, h: Arc<dyn StanzaHandler>) {
        self.hooks.intercepts.insert((point, kind), h);
    }

    pub fn amend_presence(&mut self, h: Arc<dyn PresenceAmender>) {
        self.hooks.amenders.push(h);
    }

    /// Serves the subdomain `domain` (stanzas to it and to JIDs at it).
    pub fn host(&mut self, domain: &str, h: Arc<dyn Host>) {
        self.hooks.hosts.insert(domain.to_ascii_lowercase(), h);
    }

    /// Adds disco items and node info for `on` (see [`DiscoProvider`]).
    pub fn disco_provider(&mut self, on: On, p: Arc<dyn DiscoProvider>) {
        self.hooks.disco.entry(on).or_default().push(p);
    }

    /// Serves GETs under `prefix` (`/muc-logs`) on the HTTP listeners (see [`HttpPages`]).
    pub fn http_pages(&mut self, prefix: String, h: Arc<dyn HttpPages>) {
        self.hooks.http_pages.push((prefix, h));
    }

    /// Adds the admin command `xmppd name …` (see [`AdminCommand`]).
    pub fn admin_command(&mut self, name: &'static str, h: Arc<dyn AdminCommand>) {
        self.hooks.admin_commands.insert(name, h);
    }

    /// A key for per-session state of type `T`.
    pub fn session_ext<T>(&mut self) -> ExtKey<T> {
        self.extensions += 1;
        ExtKey::new(self.extensions - 1)
    }

    /// Ends registration: sorts what is ordered and hands the result to the router.
    pub fn freeze(mut self) -> Result<Hooks, RegistryError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for name in self.config.modules.keys() {
            if !self.loaded.contains(&name.as_str()) {
                return Err(RegistryError {
                    module: name.clone(),
                    message: format!("no such module (known: {})", self.loaded.join(", ")),
                });
            }
        }
        let mut hooks = self.hooks;
        for list in hooks.features.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        for list in hooks.filters.values_mut() {
            list.sort_by_key(|(p, _)| -p);
        }
        for list in hooks.events.values_mut() {
            list.sort_by_key(|(p, _)| -p);
        }
        Ok(hooks)
    }
}

/// The frozen registry: read by the router and the streams, never changed after start.
pub struct Hooks {
    iq: HashMap<On, ByElement<Arc<dyn IqHandler>>>,
    pre_auth_iq: ByElement<Arc<dyn PreAuthIq>>,
    features: HashMap<On, Vec<&'static str>>,
    identities: HashMap<On, Vec<Identity>>,
    stream_features: Vec<(Stage, StreamFeature)>,
    nonzas: ByElement<Arc<dyn Nonza>>,
    /// Sorted by priority (highest first) when frozen.
    filters: HashMap<Point, Prioritised<Arc<dyn Filter>>>,
    events: HashMap<EventKind, Prioritised<Arc<dyn EventHandler>>>,
    intercepts: HashMap<(Intercept, StanzaKind), Arc<dyn StanzaHandler>>,
    amenders: Vec<Arc<dyn PresenceAmender>>,
    hosts: HashMap<String, Arc<dyn Host>>,
    disco: HashMap<On, Vec<Arc<dyn DiscoProvider>>>,
    admin_commands: HashMap<&'static str, Arc<dyn AdminCommand>>,
    http_pages: Vec<(String, Arc<dyn HttpPages>)>,
    /// (module, spec) for every module that is on.
    specs: Vec<(&'static str, Spec)>,
}

impl Hooks {
    pub fn iq(&self, on: On, ns: &str, name: &str) -> Option<&Arc<dyn IqHandler>> {
        self.iq.get(&on)?.get(ns, name)
    }

    pub fn pre_auth_iq(&self, ns: &str, name: &str) -> Option<&Arc<dyn PreAuthIq>> {
        self.pre_auth_iq.get(ns, name)
    }

    /// Disco features of `on`, sorted and without repeats.
    pub fn features(&self, on: On) -> &[&'static str] {
        self.features
            .get(&on)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn identities(&self, on: On) -> &[Identity] {
        self.identities
            .get(&on)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The stream features of `stage` for one stream.
    pub fn stream_features<'a>(
        &'a self,
        stage: Stage,
        info: &'a StreamInfo<'a>,
    ) -> impl Iterator<Item = Element> + 'a {
        self.stream_features
            .iter()
            .filter(move |(s, _)| *s == stage)
            .filter_map(move |(_, f)| f(info))
    }

    pub fn nonza(&self, ns: &str, name: &str) -> Option<&Arc<dyn Nonza>> {
        self.nonzas.get(ns, name)
    }

    /// The filters of `point`, highest priority first.
    pub fn filters(&self, point: Point) -> impl Iterator<Item = &Arc<dyn Filter>> {
        self.filters
            .get(&point)
            .into_iter()
            .flatten()
            .map(|(_, f)| f)
    }

    /// The handlers of `kind`, highest priority first.
    pub fn handlers(&self, kind: EventKind) -> impl Iterator<Item = &Arc<dyn EventHandler>> {
        self.events.get(&kind).into_iter().flatten().map(|(_, h)| h)
    }

    pub fn intercept(&self, point: Intercept, kind: StanzaKind) -> Option<&Arc<dyn StanzaHandler>> {
        self.intercepts.get(&(point, kind))
    }

    pub fn amenders(&self) -> &[Arc<dyn PresenceAmender>] {
        &self.amenders
    }

    pub fn host(&self, domain: &str) -> Option<&Arc<dyn Host>> {
        self.hosts.get(domain)
    }

    /// What the loaded modules implement, with the module implementing each.
    pub fn specs(&self) -> &[(&'static str, Spec)] {
        &self.specs
    }

    /// The subdomains modules serve (their certificates are checked by `xmppd check`).
    pub fn host_domains(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    pub fn disco_providers(&self, on: On) -> &[Arc<dyn DiscoProvider>] {
        self.disco.get(&on).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn admin_command(&self, name: &str) -> Option<&Arc<dyn AdminCommand>> {
        self.admin_commands.get(name)
    }

    /// Every module's HTTP pages, by path prefix.
    pub fn http_pages(&self) -> &[(String, Arc<dyn HttpPages>)] {
        &self.http_pages
    }
}
