//! The admin socket: how `xmppd user del` asks a running server to delete an account.
//!
//! Only the running server can end the account's sessions, tell its contacts and drop what it
//! caches, so the command goes through it when it runs. The socket is a Unix socket in the
//! data directory, mode 0600 (whoever may use it may read the database anyway). One command
//! per connection, one line each way:
//!
//! ```text
//! delete-account alice@example.org   →   ok | error <why>
//! ```
//!
//! A module's admin command (see [`crate::registry::AdminCommand`]) is its words joined by
//! tabs, after a tab: `\troom\tinfo\tlobby@conference.example.org`. Its answer is `ok`
//! and the command's output on the following lines, or `error <why>`; the server closes
//! the connection after it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use xmppd_core::BareJid;

use crate::ServerState;

/// The socket's file name in the data directory.
const SOCKET_NAME: &str = "xmppd.sock";
/// Longest command line accepted.
const MAX_LINE: u64 = 4096;
/// Longest answer the CLI reads (a room list of a big service).
const MAX_REPLY: u64 = 16 * 1024 * 1024;
/// How long a client may take to send its command, and the CLI to wait for the answer.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the socket, replacing a stale one. Fails when a server already answers on it: two
/// servers on one data directory would each cache state the other changes.
pub async fn bind(data_dir: &Path) -> io::Result<UnixListener> {
    let path = socket_path(data_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another xmppd serves this data directory",
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers commands until shutdown, then removes the socket.
pub async fn serve(listener: UnixListener, state: Arc<ServerState>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::shutting_down(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, state.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(socket_path(&state.config.server.data_dir));
}

async fn answer(stream: UnixStream, state: Arc<ServerState>) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader.take(MAX_LINE));
    let reply = match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => execute(&state, line.trim_end_matches(['\r', '\n'])).await,
        _ => "error unreadable command".to_string(),
    };
    let _ = writer.write_all(format!("{reply}\n").as_bytes()).await;
}

async fn execute(state: &ServerState, command: &str) -> String {
    let router = &state.router;
    if let Some(words) = command.strip_prefix('\t') {
        let words: Vec<String> = words.split('\t').map(str::to_string).collect();
        return match run_module_command(state, &words).await {
            Ok(out) => format!("ok\n{out}"),
            Err(e) => format!("error {e}"),
        };
    }
    match command {
        "ping" => return "pong".to_string(),
        "reload" => {
            return match crate::reload(state) {
                Ok(summary) => format!("ok {summary}"),
                Err(e) => format!("error {e}"),
            }
        }
        _ => {}
    }
    match command.split_once(' ') {
        Some(("delete-account", jid)) => {
            let user = match BareJid::new(jid) {
                Ok(user) if user.node().is_some() => user,
                _ => return format!("error {jid:?} is not an account JID"),
            };
            if !router.account_exists(&user).await {
                return format!("error {user} does not exist");
            }
            let mut cx = router.context();
            let deleted = crate::accounts::delete(&mut cx, &user).await;
            router.apply(cx).await;
            match deleted {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error {}", e.condition.as_str()),
            }
        }
        _ => format!("error unknown command {command:?}"),
    }
}

/// Runs a module's admin command (`words[0]` is its name) in this server.
pub async fn run_module_command(state: &ServerState, words: &[String]) -> Result<String, String> {
    let router = &state.router;
    let Some((name, args)) = words.split_first() else {
        return Err("no command".into());
    };
    let Some(command) = router.hooks().admin_command(name).cloned() else {
        return Err(format!("unknown command {name:?} (is its module enabled?)"));
    };
    let mut cx = router.context();
    let result = command.run(&mut cx, args).await;
    router.apply(cx).await;
    result
}

/// The line that asks the running server for a module's admin command (see the module
/// docs); `None` when a word holds a tab or a line break, which the line cannot carry.
pub fn module_command_line(words: &[String]) -> Option<String> {
    if words.iter().any(|w| w.contains(['\t', '\n', '\r'])) {
        return None;
    }
    Some(format!("\t{}", words.join("\t")))
}

/// Sends one command to the server running on `data_dir`; `None` when none is running.
/// The answer is everything the server writes before it closes the connection.
pub async fn request(data_dir: &Path, command: &str) -> io::Result<Option<String>> {
    let mut stream = match UnixStream::connect(socket_path(data_dir)).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut reply = String::new();
    let mut reader = stream.take(MAX_REPLY);
    tokio::time::timeout(TIMEOUT, reader.read_to_string(&mut reply))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the server did not answer"))??;
    Ok(Some(reply.trim_end().to_string()))
}
