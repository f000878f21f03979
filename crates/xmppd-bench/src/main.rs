//! `xmppd-bench`: a load generator for any XMPP server on loopback, and the summary of its
//! results. See bench/README.md.

mod conn;
mod errors;
mod histogram;
mod procstat;
mod reader;
mod relay;
mod scenario;
mod scram;
mod summary;
mod tls;
mod web;
mod xml;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::conn::Target;
use crate::scenario::Run;

#[derive(Parser)]
#[command(
    name = "xmppd-bench",
    about = "Load generator for XMPP servers on loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against a server and print its result as JSON.
    Run(Box<RunArgs>),
    /// Combine result files into a Markdown table and a JSON summary.
    Summarize(SummarizeArgs),
    /// Print a TCP port that is free on 127.0.0.1 now (for scripts).
    FreePort,
    /// A minimal TLS relay for the chat scenario: the machine's floor, not a server
    /// (see src/relay.rs).
    Relay(relay::RelayArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioName {
    Login,
    Idle,
    Chat,
    Presence,
    /// idle over WebSocket (RFC 7395).
    #[value(name = "idle_ws")]
    IdleWs,
    /// idle over BOSH (XEP-0124/0206), one held request per session.
    #[value(name = "idle_bosh")]
    IdleBosh,
    /// chat between a WebSocket session and a TCP session in each pair.
    #[value(name = "chat_ws")]
    ChatWs,
    /// PEP nickname publishes (XEP-0163/0172) notified to contacts with caps (XEP-0115).
    Pep,
    /// Joins to one MUC room (XEP-0045), measured one by one.
    #[value(name = "muc_join")]
    MucJoin,
    /// Groupchat fan-out in one MUC room.
    Muc,
    /// Persistent MUC rooms created and left empty: what they cost while unused.
    #[value(name = "muc_rooms")]
    MucRooms,
    /// chat between two federated servers: one session of each pair on each (--peer-addr).
    S2s,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: ScenarioName,
    /// The server's client port (STARTTLS).
    #[arg(long, default_value = "127.0.0.1:5222")]
    addr: SocketAddr,
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// s2s: the second server's client port; odd-numbered sessions log in there.
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// s2s: the second server's domain.
    #[arg(long)]
    peer_domain: Option<String>,
    /// s2s: the second server's process (its CPU and memory count with the first's).
    #[arg(long)]
    peer_pid: Option<u32>,
    /// s2s: both servers' s2s listening ports, to count the server-to-server connections.
    #[arg(long, value_delimiter = ',')]
    s2s_ports: Vec<u16>,
    /// The server's plain-HTTP listener for WebSocket and BOSH (idle_ws, idle_bosh, chat_ws).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Path of the WebSocket endpoint on --http-addr.
    #[arg(long, default_value = "/xmpp-websocket")]
    ws_path: String,
    /// Path of the BOSH endpoint on --http-addr.
    #[arg(long, default_value = "/http-bind")]
    bosh_path: String,
    /// Accounts are PREFIX1 … PREFIXn, all with the same password.
    #[arg(long, default_value = "bench")]
    user_prefix: String,
    #[arg(long, default_value = "bench-secret")]
    password: String,
    /// Accounts used: logins (login), sessions (idle, chat: N/2 pairs), accounts (presence).
    #[arg(long, short = 'n', default_value_t = 100)]
    sessions: usize,
    /// login: logins in the measured pass (default: one per account).
    #[arg(long)]
    logins: Option<usize>,
    /// login: skip the unmeasured pass that warms the SCRAM key cache.
    #[arg(long)]
    no_warmup: bool,
    /// New connections per second while logging sessions in.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Most logins in progress at once.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// The server's process, for its CPU time and memory (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's name in the result.
    #[arg(long, default_value = "server")]
    label: String,
    /// The scenario's name in the result, e.g. idle-10000 when one scenario runs at several
    /// sizes (default: the scenario).
    #[arg(long)]
    name: Option<String>,
    /// Seconds each wait for the server may take before it counts as an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// idle: seconds to hold the sessions before reading memory.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// chat, muc: messages per second, all senders together.
    #[arg(long, default_value_t = 1000.0)]
    msg_rate: f64,
    /// chat, presence: seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// chat, presence: longest wait for stanzas in flight after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// presence, pep: mutual contacts per account.
    #[arg(long, default_value_t = 10)]
    contacts: usize,
    /// presence: presence changes per second, all sessions together.
    #[arg(long, default_value_t = 200.0)]
    presence_rate: f64,
    /// muc_join: joins per second; 0: everyone at once (a join storm).
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// muc: occupants that send (0: every occupant).
    #[arg(long, default_value_t = 0)]
    senders: usize,
    /// muc, muc_join: roles whose presence the room broadcasts, comma-separated (default:
    /// the service's, usually every role).
    #[arg(long, value_delimiter = ',')]
    presence_broadcast: Vec<String>,
    /// muc_rooms: persistent rooms to create (-n sessions create them).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// pep: nickname publishes per second, all sessions together.
    #[arg(long, default_value_t = 50.0)]
    publish_rate: f64,
    /// presence: longest wait for the subscriptions that make the rosters (it ends sooner
    /// when all are made, or when the server sends nothing for 10 s).
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Local addresses to connect from in turn (e.g. 127.0.0.1,127.0.0.2), each with its
    /// own 64k ports.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
    /// Upper bound on the whole run, in seconds.
    #[arg(long, default_value_t = 900.0)]
    max_run: f64,
    /// Write the JSON result here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SummarizeArgs {
    /// Result files written by `run`.
    results: Vec<PathBuf>,
    /// The label of our server: ratios are ours / each other server.
    #[arg(long, default_value = "xmppd")]
    ours: String,
    /// Column order, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "xmppd,prosody,ejabberd,relay"
    )]
    servers: Vec<String>,
    /// Extra facts for the header (versions, date), as KEY=VALUE.
    #[arg(long)]
    meta: Vec<String>,
    #[arg(long)]
    markdown: PathBuf,
    #[arg(long)]
    json: PathBuf,
    /// An earlier summary (latest.json): its results for scenarios these results do not
    /// have are kept, with its header facts marked as the earlier run's.
    #[arg(long)]
    keep: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Summarize(args) => summarize(args),
        Command::FreePort => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| println!("{}", a.port()))
            .map_err(|e| e.to_string()),
        Command::Relay(args) => relay::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn positive(name: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e6 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("--{name} must be a positive number of seconds"))
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    let timeout = positive("timeout", args.timeout)?;
    let max_run = positive("max-run", args.max_run)?;
    for (name, v) in [
        ("rate", args.rate),
        ("msg-rate", args.msg_rate),
        ("presence-rate", args.presence_rate),
        ("publish-rate", args.publish_rate),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("--{name} must be positive"));
        }
    }
    if !(args.join_rate.is_finite() && args.join_rate >= 0.0) {
        return Err("--join-rate must be 0 (all at once) or positive".into());
    }
    if args.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    if !args.addr.ip().is_loopback()
        || args.source_addrs.iter().any(|a| !a.is_loopback())
        || args.http_addr.is_some_and(|a| !a.ip().is_loopback())
        || args.peer_addr.is_some_and(|a| !a.ip().is_loopback())
    {
        return Err("only loopback addresses may be used".into());
    }
    let federated = matches!(args.scenario, ScenarioName::S2s);
    if federated != (args.peer_addr.is_some() && args.peer_domain.is_some()) {
        return Err(
            "--peer-addr and --peer-domain go with --scenario s2s (and it needs them)".into(),
        );
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let report = runtime.block_on(async {
        let mut target = Target::new(
            args.addr,
            args.domain.clone(),
            args.user_prefix.clone(),
            &args.password,
            args.source_addrs.clone(),
            timeout,
        );
        target.http = args.http_addr.map(|addr| conn::HttpTarget {
            addr,
            ws_path: args.ws_path.clone(),
            bosh_path: args.bosh_path.clone(),
        });
        let peer = args
            .peer_addr
            .zip(args.peer_domain.clone())
            .map(|(addr, domain)| {
                Arc::new(Target::new(
                    addr,
                    domain,
                    args.user_prefix.clone(),
                    &args.password,
                    args.source_addrs.clone(),
                    timeout,
                ))
            });
        let run = Arc::new(Run {
            target: Arc::new(target),
            peer,
            peer_pid: args.peer_pid,
            server_pid: args.server_pid,
            errors: Default::default(),
            epoch: Instant::now(),
            rate: args.rate,
            max_inflight: args.max_inflight,
        });
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        eprintln!(
            "xmppd-bench: {} against {} ({}), {} accounts",
            scenario_name(args.scenario),
            args.label,
            args.addr,
            args.sessions
        );
        let scenario = run_scenario(run.clone(), &args);
        let (metrics, status) = match tokio::time::timeout(max_run, scenario).await {
            Ok(outcome) => outcome,
            Err(_) => (json!({}), "failed"),
        };
        if status == "failed" && run.errors.total() == 0 {
            run.errors
                .add("run", 1, "no work completed (or --max-run reached)");
        }
        let keys = &run.target.keys;
        json!({
            "label": args.label,
            "scenario": args.name.as_deref().unwrap_or(scenario_name(args.scenario)),
            "status": status,
            "started_unix": started,
            "target": args.addr.to_string(),
            "tls": run.target.tls_params.get(),
            "metrics": metrics,
            "errors": run.errors.to_json(),
            "errors_total": run.errors.total(),
            "scram_key_cache": {
                "hits": keys.hits.load(Ordering::Relaxed),
                "misses": keys.misses.load(Ordering::Relaxed),
            },
        })
    });
    // Connection tasks left behind by a timeout must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match &args.out {
        Some(path) => std::fs::write(path, text + "\n").map_err(|e| e.to_string())?,
        None => println!("{text}"),
    }
    eprintln!(
        "xmppd-bench: {} {}: {}",
        args.label, report["scenario"], report["status"]
    );
    if report["status"] == "failed" {
        return Err("the scenario failed (see the result's errors)".into());
    }
    Ok(())
}

fn scenario_name(s: ScenarioName) -> &'static str {
    match s {
        ScenarioName::Login => "login",
        ScenarioName::Idle => "idle",
        ScenarioName::Chat => "chat",
        ScenarioName::Presence => "presence",
        ScenarioName::IdleWs => "idle_ws",
        ScenarioName::IdleBosh => "idle_bosh",
        ScenarioName::ChatWs => "chat_ws",
        ScenarioName::Pep => "pep",
        ScenarioName::MucJoin => "muc_join",
        ScenarioName::Muc => "muc",
        ScenarioName::MucRooms => "muc_rooms",
        ScenarioName::S2s => "s2s",
    }
}

async fn run_scenario(run: Arc<Run>, args: &RunArgs) -> (Value, &'static str) {
    let secs = Duration::from_secs_f64;
    match args.scenario {
        ScenarioName::Login => {
            let params = scenario::login::Params {
                accounts: args.sessions,
                logins: args.logins.unwrap_or(args.sessions),
                warmup: !args.no_warmup,
            };
            scenario::login::run(run, params).await
        }
        ScenarioName::Idle | ScenarioName::IdleWs | ScenarioName::IdleBosh => {
            let transport = match args.scenario {
                ScenarioName::IdleWs => conn::Transport::Ws,
                ScenarioName::IdleBosh => conn::Transport::Bosh,
                _ => conn::Transport::Tcp,
            };
            let params = scenario::idle::Params {
                sessions: args.sessions,
                hold: secs(args.hold.max(0.0)),
                transport,
            };
            scenario::idle::run(run, params).await
        }
        ScenarioName::Chat | ScenarioName::ChatWs | ScenarioName::S2s => {
            let params = scenario::chat::Params {
                pairs: (args.sessions / 2).max(1),
                rate: args.msg_rate,
                duration: secs(args.duration.max(0.1)),
                drain: secs(args.drain.max(0.0)),
                ws_side: matches!(args.scenario, ScenarioName::ChatWs),
                s2s_ports: args.s2s_ports.clone(),
            };
            scenario::chat::run(run, params).await
        }
        ScenarioName::Presence => {
            let params = scenario::presence::Params {
                accounts: args.sessions,
                contacts: args.contacts.max(1),
                rate: args.presence_rate,
                duration: secs(args.duration.max(0.1)),
                drain: secs(args.drain.max(0.0)),
                setup_timeout: secs(args.setup_timeout.max(0.0)),
            };
            scenario::presence::run(run, params).await
        }
        ScenarioName::Pep => {
            let params = scenario::pep::Params {
                accounts: args.sessions,
                contacts: args.contacts.max(1),
                rate: args.publish_rate,
                duration: secs(args.duration.max(0.1)),
                drain: secs(args.drain.max(0.0)),
                setup_timeout: secs(args.setup_timeout.max(0.0)),
            };
            scenario::pep::run(run, params).await
        }
        ScenarioName::MucJoin | ScenarioName::Muc => {
            let fanout = matches!(args.scenario, ScenarioName::Muc);
            let params = scenario::muc::Params {
                occupants: args.sessions,
                join_rate: args.join_rate,
                msg_rate: fanout.then_some(args.msg_rate),
                senders: args.senders,
                presence_broadcast: args.presence_broadcast.clone(),
                duration: secs(args.duration.max(0.1)),
                drain: secs(args.drain.max(0.0)),
                setup_timeout: secs(args.setup_timeout.max(0.0)),
            };
            scenario::muc::run(run, params).await
        }
        ScenarioName::MucRooms => {
            let params = scenario::muc_rooms::Params {
                rooms: args.rooms.max(1),
                creators: args.sessions,
            };
            scenario::muc_rooms::run(run, params).await
        }
    }
}

fn summarize(args: SummarizeArgs) -> Result<(), String> {
    let mut results = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        results.push(value);
    }
    let meta: BTreeMap<String, String> = args
        .meta
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => Err(format!("--meta {kv}: expected KEY=VALUE")),
        })
        .collect::<Result<_, _>>()?;
    let mut kept = BTreeMap::new();
    if let Some(path) = &args.keep {
        if path.exists() {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let earlier: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            kept = summary::keep_earlier(&earlier, &mut results);
        }
    }
    let out = summary::summarize(&summary::Input {
        results,
        ours: args.ours,
        servers: args.servers,
        meta,
        kept,
        machine: summary::machine(),
    });
    std::fs::write(&args.markdown, &out.markdown).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&out.json).map_err(|e| e.to_string())?;
    std::fs::write(&args.json, json + "\n").map_err(|e| e.to_string())?;
    Ok(())
}
