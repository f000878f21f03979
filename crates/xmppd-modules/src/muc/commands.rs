//! `xmppd room list|info|create|destroy`: the operator's commands (run by the server, see
//! `xmppd_server::registry::AdminCommand`), and status 332 to every occupant when the
//! server stops. Both go through each room's task, like any stanza for the room. Also the
//! count of stored rooms at start, for the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use xmppd_core::BareJid;
use xmppd_server::registry::{AdminCommand, Ctx, Event, EventHandler, Handled};

use super::config::RoomConfig;
use super::{Command, Input, Shared};

/// The MUC services by domain.
pub(super) type Services = Arc<BTreeMap<String, Arc<Shared>>>;

/// How long an operator's command waits for the room's task.
const ANSWER_TIME: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: xmppd room list [SERVICE]
       xmppd room info ROOM@SERVICE
       xmppd room create ROOM@SERVICE --owner JID [--owner JID…] [--name NAME]
                         [--description TEXT] [--hidden] [--members-only]
       xmppd room destroy ROOM@SERVICE [--reason TEXT] [--venue ROOM@SERVICE]";

pub(super) struct RoomCommand(pub(super) Services);

#[async_trait]
impl AdminCommand for RoomCommand {
    async fn run(&self, cx: &mut Ctx<'_>, args: &[String]) -> Result<String, String> {
        let (verb, rest) = args.split_first().ok_or(USAGE)?;
        match verb.as_str() {
            "list" => self.list(cx, rest).await,
            "info" | "create" | "destroy" => {
                let (room, options) = rest.split_first().ok_or(USAGE)?;
                let (shared, name) = self.room(room)?;
                let command = parse(verb, options, shared.config.default_history)?;
                ask(&shared, &name, command, cx).await
            }
            "help" | "--help" | "-h" => Ok(USAGE.to_string()),
            _ => Err(format!("unknown room command {verb:?}\n{USAGE}")),
        }
    }
}

impl RoomCommand {
    /// Every room of one service or of all: active ones and stored ones, one per line.
    async fn list(&self, cx: &Ctx<'_>, args: &[String]) -> Result<String, String> {
        let services: Vec<&Arc<Shared>> = match args {
            [] => self.0.values().collect(),
            [service] => vec![self.service(service)?],
            _ => return Err(USAGE.into()),
        };
        let mut lines = Vec::new();
        for shared in services {
            let stored = cx
                .storage()
                .muc
                .room_names(&shared.domain)
                .await
                .map_err(|e| format!("reading the stored rooms: {e}"))?;
            let mut rooms: BTreeMap<String, (bool, bool)> =
                stored.into_iter().map(|n| (n, (true, false))).collect();
            for name in shared.rooms().keys() {
                rooms.entry(name.clone()).or_insert((false, false)).1 = true;
            }
            for (name, (stored, active)) in rooms {
                let kind = if stored { "persistent" } else { "temporary" };
                let state = if active { "active" } else { "idle" };
                lines.push(format!("{name}@{} {kind} {state}", shared.domain));
            }
        }
        Ok(lines.join("\n"))
    }

    fn service(&self, domain: &str) -> Result<&Arc<Shared>, String> {
        self.0.get(&domain.to_ascii_lowercase()).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            format!(
                "{domain} is not a MUC service here (known: {})",
                known.join(", ")
            )
        })
    }

    /// The service and the room's name (its node, as the service keys rooms) of `jid`.
    fn room(&self, jid: &str) -> Result<(Arc<Shared>, String), String> {
        let bare = BareJid::new(jid).map_err(|e| format!("{jid:?} is not a room JID: {e}"))?;
        let name = bare
            .node()
            .ok_or_else(|| format!("{jid:?} has no room name (expected ROOM@SERVICE)"))?;
        let shared = self.service(bare.domain().as_str())?;
        Ok((shared.clone(), name.as_str().to_string()))
    }
}

/// The command `verb` with its `--options`.
fn parse(verb: &str, options: &[String], history: usize) -> Result<Command, String> {
    let mut owners = Vec::new();
    let mut config = RoomConfig::new(history);
    let (mut reason, mut venue) = (None, None);
    let mut words = options.iter();
    while let Some(option) = words.next() {
        let mut value = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{option} needs a value"))
        };
        match (verb, option.as_str()) {
            ("create", "--owner") => {
                let jid = value()?;
                owners.push(BareJid::new(&jid).map_err(|e| format!("--owner {jid:?}: {e}"))?);
            }
            ("create", "--name") => config.name = value()?,
            ("create", "--description") => config.description = value()?,
            ("create", "--hidden") => config.public = false,
            ("create", "--members-only") => config.members_only = true,
            ("destroy", "--reason") => reason = Some(value()?),
            ("destroy", "--venue") => {
                let jid = value()?;
                BareJid::new(&jid).map_err(|e| format!("--venue {jid:?}: {e}"))?;
                venue = Some(jid);
            }
            _ => return Err(format!("room {verb}: unknown option {option:?}\n{USAGE}")),
        }
    }
    Ok(match verb {
        "info" => Command::Info,
        "create" if owners.is_empty() => {
            return Err("room create needs at least one --owner JID".into())
        }
        "create" => Command::Create {
            owners,
            config: Box::new(config),
        },
        _ => Command::Destroy { reason, venue },
    })
}

/// Queues `command` for the room's task and waits for its answer.
async fn ask(
    shared: &Arc<Shared>,
    name: &str,
    command: Command,
    cx: &Ctx<'_>,
) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    if shared.queue(name, Input::Command(command, tx), cx).is_err() {
        return Err("the room is busy; try again".into());
    }
    match tokio::time::timeout(ANSWER_TIME, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("the room's task ended without answering".into()),
        Err(_) => Err("the room did not answer in time".into()),
    }
}

/// At start, the persistent rooms are counted for the metrics (not loaded: a room costs
/// nothing until it is used).
pub(super) struct Census(pub(super) Services);

#[async_trait]
impl EventHandler for Census {
    async fn on(&self, cx: &mut Ctx<'_>, _: &Event<'_>) -> Handled {
        let mut stored = 0;
        for service in self.0.keys() {
            match cx.storage().muc.room_names(service).await {
                Ok(names) => stored += names.len() as i64,
                Err(e) => tracing::warn!(error = %e, %service, "counting the stored rooms failed"),
            }
        }
        if let Some(server) = cx.server_handle().upgrade() {
            server.metrics.muc_rooms_persistent.set(stored);
        }
        Handled::Continue
    }
}

/// When the server stops, every active room tells its occupants (status 332), and the
/// server waits for them (bounded) before it ends the sessions.
pub(super) struct Farewell(pub(super) Services);

#[async_trait]
impl EventHandler for Farewell {
    async fn on(&self, cx: &mut Ctx<'_>, _: &Event<'_>) -> Handled {
        let mut answers = Vec::new();
        for shared in self.0.values() {
            let names: Vec<String> = shared.rooms().keys().cloned().collect();
            for name in names {
                let (tx, rx) = oneshot::channel();
                if shared
                    .queue(&name, Input::Command(Command::ShutDown, tx), cx)
                    .is_ok()
                {
                    answers.push(rx);
                }
            }
        }
        // The rooms work at once; waiting for them in turn costs no more than the slowest.
        let deadline = tokio::time::Instant::now() + ANSWER_TIME / 4;
        for answer in answers {
            let _ = tokio::time::timeout_at(deadline, answer).await;
        }
        Handled::Continue
    }
}
