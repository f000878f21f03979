//! `xmppd`: the server and its admin commands.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xmppd_core::BareJid;
use xmppd_server::config::{Config, LogFormat};
use xmppd_server::registry::Spec;
use xmppd_server::sasl::credentials;
use xmppd_storage::Storage;

#[derive(Parser)]
#[command(name = "xmppd", version, about = "An XMPP server")]
struct Cli {
    /// TOML configuration file; without it every key takes its default (domain localhost,
    /// data in ./data). See xmppd.example.toml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// List the specifications (RFCs, XEPs) this configuration implements: a Markdown table,
    /// or with --doap the DOAP file compliance trackers read.
    Features {
        #[arg(long)]
        doap: bool,
    },
    /// Manage Multi-User Chat rooms: list, info, create, destroy (`xmppd room help`).
    /// Goes through the running server when there is one, else through the storage.
    Room {
        #[arg(allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Tell the running server to re-read its configuration and certificates (as SIGHUP
    /// does), e.g. after an ACME client renewed them. Sessions stay connected.
    Reload,
    /// Check the configuration, certificates, listen addresses and storage, changing nothing;
    /// exits non-zero if anything would stop logins or federation.
    Check {
        /// One JSON object on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct PasswordArgs {
    /// The password (visible in the process list: for scripts on trusted machines).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account, e.g. `xmppd user add alice@localhost`.
    Add {
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Delete an account.
    Del { jid: String },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List the accounts of a domain.
    List { domain: String },
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// The `log.level` filter, or why it is not one (so a typo fails instead of logging nothing).
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let invalid = |why: &str| format!("log.level {level:?} is not a valid filter: {why}");
    // EnvFilter takes any bare word as a target name, so a typo would silence everything:
    // a directive without `=` must be a level or a module path.
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        let path_like = directive
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if bare && !path_like {
            return Err(invalid(&format!(
                "{directive:?} is neither a level (error, warn, info, debug, trace, off) nor a module path"
            )));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map_err(|e| invalid(&e.to_string()))
}

/// Installs the log output; the setter it returns applies a new `log.level` on reload
/// (none when `RUST_LOG` chose the filter: the environment stays in charge).
fn init_logging(config: &Config) -> Result<Option<xmppd_server::LogLevelSetter>, String> {
    let configured = log_filter(&config.log.level)?;
    let (filter, from_env) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (configured, false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The filter sits behind a reload handle so that SIGHUP can change the level.
    let setter = match config.log.format {
        // One JSON object per line, fields as keys: what log collectors parse.
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = level_setter(builder.reload_handle());
            builder.init();
            handle
        }
        LogFormat::Text if stderr_is_journal() => {
            let format = tracing_subscriber::fmt::format().without_time();
            let builder = builder
                .with_ansi(false)
                .event_format(JournalFormat(format))
                .with_filter_reloading();
            let handle = level_setter(builder.reload_handle());
            builder.init();
            handle
        }
        LogFormat::Text => {
            // Colour only for a person at a terminal (https://no-color.org), never in
            // files, pipes or the journal.
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let builder = builder.with_ansi(colour).with_filter_reloading();
            let handle = level_setter(builder.reload_handle());
            builder.init();
            handle
        }
    };
    Ok((!from_env).then_some(setter))
}

/// Whether stderr is the systemd journal: systemd says so in `JOURNAL_STREAM` (the device
/// and inode of the stream it connected), which only counts if stderr is still that stream.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// Lines for the journal: the priority as an sd-daemon(3) prefix, which journald stores as
/// the entry's level (so `journalctl -p warning` works), and no timestamp, which journald
/// records itself.
struct JournalFormat(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

fn level_setter<S: Send + Sync + 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> xmppd_server::LogLevelSetter {
    Box::new(move |level: &str| {
        let filter = log_filter(level)?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::User { action } => user(action, config).await,
        Command::Check { json } => check(config, json).await,
        Command::Reload => reload(config).await,
        Command::Features { doap } => features(config, doap),
        Command::Room { args } => {
            let (args, given) = take_config_option(args);
            module_command(given.as_deref().or(config), "room", args).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: Option<&Path>) -> Result<(), String> {
    let config = load_config(path)?;
    let log_level = init_logging(&config)?;
    // Before anything can tell a supervisor we are up: a SIGHUP must never find the
    // default action (which ends the process) in place.
    let signals = Signals::install();
    let server = xmppd_server::start(config, xmppd_modules::standard)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(setter) = log_level {
        let _ = server.state.log_level.set(setter);
    }
    // Under systemd (Type=notify): ready now, and alive as long as the runtime runs.
    systemd_notify(&[sd_notify::NotifyState::Ready]);
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        tokio::spawn(watchdog(std::time::Duration::from_micros(usec / 2)));
    }
    let daily = server.state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
            xmppd_server::tls::warn_expiring(&daily.config, xmppd_server::CERT_WARNING_DAYS);
        }
    });
    signals.run_until_stopped(&server.state).await;
    systemd_notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn systemd_notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "telling systemd failed");
    }
}

/// Pings the systemd watchdog from the runtime: if the runtime stalls, systemd notices.
async fn watchdog(every: std::time::Duration) {
    loop {
        systemd_notify(&[sd_notify::NotifyState::Watchdog]);
        tokio::time::sleep(every).await;
    }
}

/// The signals `serve` obeys: SIGTERM and Ctrl-C stop it, SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                _ => None,
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Serves until SIGTERM or Ctrl-C; SIGHUP reloads the configuration and certificates.
    async fn run_until_stopped(self, state: &xmppd_server::ServerState) {
        #[cfg(unix)]
        if let Some((mut term, mut hup)) = self.unix {
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    _ = hup.recv() => {
                        systemd_notify(&[sd_notify::NotifyState::Reloading]);
                        if let Err(e) = xmppd_server::reload(state) {
                            tracing::error!(error = %e, "reload failed; the old configuration stays");
                        }
                        systemd_notify(&[sd_notify::NotifyState::Ready]);
                    }
                }
            }
        }
        let _ = state;
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn reload(path: Option<&Path>) -> Result<(), String> {
    let config = load_config(path)?;
    #[cfg(unix)]
    match xmppd_server::admin::request(&config.server.data_dir, "reload").await {
        Ok(Some(reply)) => match reply.strip_prefix("ok ") {
            Some(summary) => {
                println!("{summary}");
                Ok(())
            }
            None => Err(reply.strip_prefix("error ").unwrap_or(&reply).to_string()),
        },
        Ok(None) => Err("no server is running on this data directory".into()),
        Err(e) => Err(format!("asking the running server: {e}")),
    }
    #[cfg(not(unix))]
    Err("reload needs the admin socket (Unix only)".into())
}

/// A module command's words take every argument after its name, `--config FILE` too:
/// that one is the global option, wherever it is written.
fn take_config_option(args: Vec<String>) -> (Vec<String>, Option<PathBuf>) {
    let mut words = Vec::with_capacity(args.len());
    let mut config = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(path) = arg.strip_prefix("--config=") {
            config = Some(PathBuf::from(path));
        } else if arg == "--config" || arg == "-c" {
            config = args.next().map(PathBuf::from);
        } else {
            words.push(arg);
        }
    }
    (words, config)
}

/// A module's admin command (`xmppd room …`): run by the running server, or, when none
/// runs on the data directory, by the modules started here without listeners.
async fn module_command(path: Option<&Path>, name: &str, args: Vec<String>) -> Result<(), String> {
    let mut config = load_config(path)?;
    let words: Vec<String> = std::iter::once(name.to_string()).chain(args).collect();
    #[cfg(unix)]
    {
        let line = xmppd_server::admin::module_command_line(&words)
            .ok_or("arguments cannot hold tabs or line breaks")?;
        match xmppd_server::admin::request(&config.server.data_dir, &line).await {
            Ok(Some(reply)) => {
                return match reply.strip_prefix("ok") {
                    Some(out) => {
                        print_output(out.strip_prefix('\n').unwrap_or(out));
                        Ok(())
                    }
                    None => Err(reply.strip_prefix("error ").unwrap_or(&reply).to_string()),
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("asking the running server: {e}")),
        }
    }
    config.listen = xmppd_server::config::ListenConfig::none();
    let server = xmppd_server::start(config, xmppd_modules::standard)
        .await
        .map_err(|e| e.to_string())?;
    let result = xmppd_server::admin::run_module_command(&server.state, &words).await;
    server.shutdown().await;
    print_output(&result?);
    Ok(())
}

fn print_output(out: &str) {
    if !out.is_empty() {
        println!("{out}");
    }
}

/// Splits `user@domain`, checking the domain is served and the JID is valid.
fn account_jid(config: &Config, jid: &str) -> Result<(String, String), String> {
    let bare = BareJid::new(jid).map_err(|e| format!("{jid:?} is not a valid JID: {e}"))?;
    let node = bare
        .node()
        .ok_or_else(|| format!("{jid:?} has no username (expected user@domain)"))?;
    let domain = bare.domain().as_str();
    if !config.serves(domain) {
        return Err(format!(
            "{domain} is not served by this configuration (server.domains)"
        ));
    }
    Ok((node.as_str().to_string(), domain.to_string()))
}

fn read_password(args: &PasswordArgs) -> Result<String, String> {
    let password = if let Some(p) = &args.password {
        p.clone()
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err("no terminal to ask for the password on: pipe it in with \
                 --password-stdin, or give it with --password"
                .into());
        }
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let second = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("the passwords differ".into());
        }
        first
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

async fn account_record(
    config: &Config,
    user: &str,
    domain: &str,
    password: String,
) -> Result<xmppd_storage::Account, String> {
    let (user, domain) = (user.to_string(), domain.to_string());
    let iterations = config.sasl.scram_iterations;
    tokio::task::spawn_blocking(move || {
        credentials::new_account(&user, &domain, &password, iterations)
    })
    .await
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "the password contains characters SASLprep forbids".to_string())
}

async fn open_storage(config: &Config) -> Result<Storage, String> {
    xmppd_server::create_private_dir(&config.server.data_dir)
        .map_err(|e| format!("{}: {e}", config.server.data_dir.display()))?;
    Storage::open(&config.storage_url())
        .await
        .map_err(|e| e.to_string())
}

async fn user(action: UserAction, path: Option<&Path>) -> Result<(), String> {
    let config = load_config(path)?;
    let storage = open_storage(&config).await?;
    let accounts = &storage.accounts;
    let db = |e: xmppd_storage::StorageError| e.to_string();
    match action {
        UserAction::Add { jid, password } => {
            let (user, domain) = account_jid(&config, &jid)?;
            let password = read_password(&password)?;
            let account = account_record(&config, &user, &domain, password).await?;
            if !accounts.create(&account).await.map_err(db)? {
                return Err(format!("{user}@{domain} exists already"));
            }
            println!("created {user}@{domain}");
        }
        UserAction::Del { jid } => {
            let (user, domain) = account_jid(&config, &jid)?;
            // A running server does it all: sessions end, contacts are unsubscribed.
            #[cfg(unix)]
            {
                let command = format!("delete-account {user}@{domain}");
                let data_dir = &config.server.data_dir;
                match xmppd_server::admin::request(data_dir, &command).await {
                    Ok(Some(reply)) if reply == "ok" => {
                        println!("deleted {user}@{domain} (through the running server)");
                        return Ok(());
                    }
                    Ok(Some(reply)) => {
                        let why = reply.strip_prefix("error ").unwrap_or(&reply);
                        return Err(format!("the running server refused: {why}"));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("asking the running server: {e}")),
                }
            }
            if !accounts.delete(&user, &domain).await.map_err(db)? {
                return Err(format!("{user}@{domain} does not exist"));
            }
            println!("deleted {user}@{domain}");
        }
        UserAction::Passwd { jid, password } => {
            let (user, domain) = account_jid(&config, &jid)?;
            if !accounts.exists(&user, &domain).await.map_err(db)? {
                return Err(format!("{user}@{domain} does not exist"));
            }
            let password = read_password(&password)?;
            let account = account_record(&config, &user, &domain, password).await?;
            if !accounts.set_credentials(&account).await.map_err(db)? {
                return Err(format!("{user}@{domain} does not exist"));
            }
            println!("changed the password of {user}@{domain}");
        }
        UserAction::List { domain } => {
            for user in accounts.list(&domain).await.map_err(db)? {
                println!("{user}@{domain}");
            }
        }
    }
    Ok(())
}

/// How long before expiry a certificate fails `check` (and the server warns).
const CERT_WARNING_DAYS: i64 = 14;

/// What `check` found: one line per item.
#[derive(Default)]
struct Report {
    items: Vec<(&'static str, String, String)>,
}

impl Report {
    fn ok(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.items.push(("ok", what.into(), detail.into()));
    }

    fn warn(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.items.push(("warning", what.into(), detail.into()));
    }

    fn fail(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.items.push(("fail", what.into(), detail.into()));
    }

    fn failed(&self) -> bool {
        self.first_failure().is_some()
    }

    fn first_failure(&self) -> Option<String> {
        self.items
            .iter()
            .find(|(status, _, _)| *status == "fail")
            .map(|(_, what, detail)| format!("{what}: {detail}"))
    }

    fn print(&self, json: bool) {
        if json {
            let checks: Vec<_> = self
                .items
                .iter()
                .map(|(status, what, detail)| {
                    serde_json::json!({ "check": what, "status": status, "detail": detail })
                })
                .collect();
            let out = serde_json::json!({ "ok": !self.failed(), "checks": checks });
            println!("{out}");
            return;
        }
        for (status, what, detail) in &self.items {
            println!("{status:7} {what}: {detail}");
        }
    }
}

/// Checks one domain's certificate: present (or to be generated), the key matching, the
/// domain and its subdomains in use covered, not expired nor expiring soon.
fn check_certificate(report: &mut Report, config: &Config, domain: &str, subdomains: &[&str]) {
    let what = format!("certificate {domain}");
    let (cert, key, generated) = xmppd_server::tls::cert_paths(config, domain);
    if generated && !cert.exists() {
        report.ok(
            what,
            format!(
                "none yet; a self-signed one will be generated at {}",
                cert.display()
            ),
        );
        return;
    }
    let info = match xmppd_server::tls::inspect_certificate(&cert, &key) {
        Ok(info) => info,
        Err(e) => return report.fail(what, e.to_string()),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days_left = (info.not_after - now).div_euclid(86_400);
    let uncovered: Vec<&str> = std::iter::once(domain)
        .chain(subdomains.iter().copied())
        .filter(|name| !info.covers(name))
        .collect();
    if !uncovered.is_empty() {
        report.fail(
            what,
            format!(
                "{} does not cover {} (it names {})",
                cert.display(),
                uncovered.join(", "),
                info.names.join(", ")
            ),
        );
    } else if info.not_after <= now {
        report.fail(what, format!("{} has expired", cert.display()));
    } else if days_left < CERT_WARNING_DAYS && !generated {
        report.fail(
            what,
            format!("{} expires in {days_left} days: renew it", cert.display()),
        );
    } else if days_left < CERT_WARNING_DAYS {
        report.ok(
            what,
            "self-signed and expiring: a new one is generated at start",
        );
    } else {
        report.ok(what, format!("valid for {days_left} more days"));
    }
}

/// With federation on: whether peers that trust what `[s2s] ca_file` (or the system's
/// roots) holds accept each domain's certificate for it and for its subdomains (RFC 6125),
/// as they check it before SASL EXTERNAL (XEP-0178). One they cannot verify leaves only
/// dialback, so it fails when `[s2s] dialback` is off.
fn check_federation_certificates(
    report: &mut Report,
    config: &Config,
    hooks: &xmppd_server::registry::Hooks,
) {
    if config.listen.s2s.is_empty() && config.listen.s2s_direct_tls.is_empty() {
        return;
    }
    let anchors = match &config.s2s.ca_file {
        Some(path) => path.display().to_string(),
        None => "the system's trusted roots".to_string(),
    };
    let verifier = match xmppd_server::s2s::certs::CertVerifier::new(config) {
        Ok(v) => v,
        Err(e) => return report.fail("s2s.ca_file", e.to_string()),
    };
    let fallback = if config.s2s.dialback {
        "peers will authenticate it with dialback (XEP-0220) only"
    } else {
        "and [s2s] dialback is off: federation cannot authenticate"
    };
    for domain in &config.server.domains {
        let what = format!("federation certificate {domain}");
        let (cert, _, generated) = xmppd_server::tls::cert_paths(config, domain);
        let suffix = format!(".{domain}");
        let names: Vec<&str> = std::iter::once(domain.as_str())
            .chain(hooks.host_domains().filter(|h| h.ends_with(&suffix)))
            .collect();
        let unverified = if generated && !cert.exists() {
            Ok(names)
        } else {
            names
                .into_iter()
                .filter_map(|name| match verifier.verify_file(&cert, name) {
                    Ok(true) => None,
                    Ok(false) => Some(Ok(name)),
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<&str>, _>>()
        };
        match unverified {
            Err(e) => report.fail(what, e.to_string()),
            Ok(names) if names.is_empty() => report.ok(what, format!("verifies under {anchors}")),
            Ok(names) => {
                let detail = format!(
                    "{} does not verify under {anchors} for {}: {fallback}",
                    if generated {
                        "the self-signed certificate"
                    } else {
                        "it"
                    },
                    names.join(", ")
                );
                if config.s2s.dialback {
                    report.warn(what, detail)
                } else {
                    report.fail(what, detail)
                }
            }
        }
    }
}

/// Whether each listen address can be bound (bound and released at once).
fn check_listeners(report: &mut Report, config: &Config, server_running: bool) {
    let l = &config.listen;
    let addrs = [
        ("c2s", &l.c2s),
        ("c2s_direct_tls", &l.c2s_direct_tls),
        ("s2s", &l.s2s),
        ("s2s_direct_tls", &l.s2s_direct_tls),
        ("component", &l.component),
        ("http", &l.http),
        ("https", &l.https),
    ];
    let metrics = l
        .metrics
        .filter(|a| !l.http.contains(a))
        .map(|a| vec![a])
        .unwrap_or_default();
    for (name, list) in addrs.into_iter().chain([("metrics", &metrics)]) {
        for addr in list {
            let what = format!("listen.{name} {addr}");
            match std::net::TcpListener::bind(addr) {
                Ok(_) => report.ok(what, "free"),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && server_running => {
                    report.ok(what, "in use by the running xmppd")
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    report.fail(what, "in use by another program")
                }
                Err(e) => report.fail(what, e.to_string()),
            }
        }
    }
}

async fn check(path: Option<&Path>, json: bool) -> Result<(), String> {
    let mut report = Report::default();
    let source = path
        .unwrap_or(Path::new("(defaults)"))
        .display()
        .to_string();
    let config = match load_config(path) {
        Ok(config) => config,
        Err(e) => {
            report.fail(format!("config {source}"), e);
            report.print(json);
            return Err(format!(
                "check failed: {}",
                report.first_failure().unwrap_or_default()
            ));
        }
    };
    report.ok(format!("config {source}"), "loads");
    match log_filter(&config.log.level) {
        Ok(_) => report.ok("log.level", config.log.level.clone()),
        Err(e) => report.fail("log.level", e),
    }
    match xmppd_server::hooks(&config, xmppd_modules::standard) {
        Ok(hooks) => {
            report.ok("modules", "load");
            for domain in &config.server.domains {
                let suffix = format!(".{domain}");
                let subdomains: Vec<&str> = hooks
                    .host_domains()
                    .filter(|h| h.ends_with(&suffix))
                    .collect();
                check_certificate(&mut report, &config, domain, &subdomains);
            }
            check_federation_certificates(&mut report, &config, &hooks);
        }
        Err(e) => report.fail("modules", e.to_string()),
    }
    #[cfg(unix)]
    let running = matches!(
        xmppd_server::admin::request(&config.server.data_dir, "ping").await,
        Ok(Some(_))
    );
    #[cfg(not(unix))]
    let running = false;
    check_listeners(&mut report, &config, running);
    let data_dir = &config.server.data_dir;
    match std::fs::metadata(data_dir) {
        Err(_) => report.ok(
            format!("data_dir {}", data_dir.display()),
            "none yet; created (mode 0700) at first start",
        ),
        #[cfg(unix)]
        Ok(meta) if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 => {
            report.warn(
                format!("data_dir {}", data_dir.display()),
                "readable by other users: chmod 700 it",
            )
        }
        Ok(_) => report.ok(format!("data_dir {}", data_dir.display()), "private"),
    }
    let url = config.storage_url();
    match Storage::open_accounts_read_only(&url).await {
        Ok(None) => report.ok(format!("storage {url}"), "none yet; created at first start"),
        Ok(Some(accounts)) => {
            for domain in &config.server.domains {
                match accounts.list(domain).await {
                    Ok(list) => report.ok(
                        format!("storage {url}"),
                        format!("{} accounts on {domain}", list.len()),
                    ),
                    Err(e) => report.fail(format!("storage {url}"), e.to_string()),
                }
            }
        }
        Err(e) => report.fail(format!("storage {url}"), e.to_string()),
    }
    report.print(json);
    match report.first_failure() {
        Some(failure) => Err(format!("check failed: {failure}")),
        None => Ok(()),
    }
}

/// Every supported spec with the module providing it, RFCs first, then XEPs by number.
fn supported(config: &Config) -> Result<Vec<(&'static str, Spec)>, String> {
    let hooks = xmppd_server::hooks(config, xmppd_modules::standard).map_err(|e| e.to_string())?;
    let mut all: Vec<(&'static str, Spec)> = xmppd_server::CORE_SPECS
        .iter()
        .map(|spec| ("core", *spec))
        .chain(hooks.specs().iter().copied())
        .collect();
    all.sort_by_key(|(module, spec)| (!spec.name.starts_with("RFC"), spec.name, *module));
    Ok(all)
}

fn features(path: Option<&Path>, doap: bool) -> Result<(), String> {
    let config = load_config(path)?;
    let specs = supported(&config)?;
    if doap {
        print!("{}", doap_document(&specs));
        return Ok(());
    }
    println!("| spec | version | status | where | notes |");
    println!("| --- | --- | --- | --- | --- |");
    for (module, spec) in &specs {
        let status = if spec.complete { "complete" } else { "partial" };
        let version = if spec.version.is_empty() {
            ""
        } else {
            spec.version
        };
        println!(
            "| {} | {version} | {status} | {module} | {} |",
            spec.name, spec.note
        );
    }
    Ok(())
}

/// A DOAP description (https://github.com/ewilderj/doap) with the XMPP extension that
/// compliance trackers (xmpp.org's software list) read.
fn doap_document(specs: &[(&'static str, Spec)]) -> String {
    use std::fmt::Write;
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = String::from(
        "<?xml version='1.0' encoding='UTF-8'?>\n\
         <rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'\n\
         \x20        xmlns='http://usefulinc.com/ns/doap#'\n\
         \x20        xmlns:xmpp='https://linkmauve.fr/ns/xmpp-doap#'>\n\
         \x20 <Project>\n\
         \x20   <name>xmppd</name>\n\
         \x20   <shortdesc>An XMPP server in Rust</shortdesc>\n\
         \x20   <programming-language>Rust</programming-language>\n\
         \x20   <license rdf:resource='https://spdx.org/licenses/AGPL-3.0-or-later.html'/>\n\
         \x20   <category rdf:resource='https://linkmauve.fr/ns/xmpp-doap#category-server'/>\n",
    );
    let _ = writeln!(
        out,
        "    <release><Version><revision>{}</revision></Version></release>",
        env!("CARGO_PKG_VERSION")
    );
    let mut seen = std::collections::BTreeSet::new();
    for (_, spec) in specs {
        if let Some(number) = spec.name.strip_prefix("RFC ") {
            if seen.insert(spec.name) {
                let _ = writeln!(
                    out,
                    "    <implements rdf:resource='https://www.rfc-editor.org/info/rfc{number}'/>"
                );
            }
            continue;
        }
        let Some(number) = spec.name.strip_prefix("XEP-") else {
            continue;
        };
        let status = if spec.complete { "complete" } else { "partial" };
        let _ = writeln!(out, "    <implements>\n      <xmpp:SupportedXep>");
        let _ = writeln!(
            out,
            "        <xmpp:xep rdf:resource='https://xmpp.org/extensions/xep-{number}.html'/>"
        );
        let _ = writeln!(out, "        <xmpp:status>{status}</xmpp:status>");
        if !spec.version.is_empty() {
            let _ = writeln!(out, "        <xmpp:version>{}</xmpp:version>", spec.version);
        }
        if !spec.note.is_empty() {
            let _ = writeln!(out, "        <xmpp:note>{}</xmpp:note>", escape(spec.note));
        }
        let _ = writeln!(out, "      </xmpp:SupportedXep>\n    </implements>");
    }
    out.push_str("  </Project>\n</rdf:RDF>\n");
    out
}
