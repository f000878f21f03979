//! Combines per-run result files into one Markdown table per scenario, with the ratios of
//! our server to each other server, and a JSON file with the same numbers plus every raw
//! result.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A number shown in the table: where it is in a result's metrics and how to read it.
struct Headline {
    path: &'static str,
    name: &'static str,
    /// Multiplies the stored value (KiB → MiB and such).
    scale: f64,
    /// Which direction is better, for the reader; None for context rows.
    higher_is_better: Option<bool>,
    /// Whether ours ÷ theirs means anything (not for the generator's or other processes' CPU).
    ratio: bool,
}

const fn h(path: &'static str, name: &'static str, higher: Option<bool>) -> Headline {
    Headline {
        path,
        name,
        scale: 1.0,
        higher_is_better: higher,
        ratio: true,
    }
}

/// A row about the run rather than the server.
const fn run_row(path: &'static str, name: &'static str) -> Headline {
    Headline {
        path,
        name,
        scale: 1.0,
        higher_is_better: None,
        ratio: false,
    }
}

const fn mib(path: &'static str, name: &'static str) -> Headline {
    Headline {
        path,
        name,
        scale: 1.0 / 1024.0,
        higher_is_better: Some(false),
        ratio: true,
    }
}

const UP: Option<bool> = Some(true);
const DOWN: Option<bool> = Some(false);

const LOGIN: &[Headline] = &[
    h("logins_per_s", "logins/s", UP),
    h("server_cpu_ms_per_login", "server CPU ms per login", DOWN),
    h("login_latency/p50_ms", "login latency p50 (ms)", DOWN),
    h("login_latency/p99_ms", "login latency p99 (ms)", DOWN),
    h("logins_ok", "logins completed", None),
    mib("window/server_peak_rss_kib", "server peak RSS (MiB)"),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const IDLE: &[Headline] = &[
    h(
        "server_rss_kib_per_session",
        "server RSS per session (KiB)",
        DOWN,
    ),
    h("sessions_online", "sessions online", None),
    mib("server_rss_baseline_kib", "server RSS before (MiB)"),
    mib("server_rss_idle_kib", "server RSS with sessions (MiB)"),
    mib("server_peak_rss_kib", "server peak RSS (MiB)"),
    mib("server_rss_after_close_kib", "server RSS after close (MiB)"),
    h("server_idle_cpu_s", "server CPU while idle (s)", DOWN),
    h("logins_per_s", "logins/s while connecting", UP),
];

const CHAT: &[Headline] = &[
    h("delivered_per_s", "delivered msgs/s", UP),
    h("server_cpu_us_per_msg", "server CPU µs per message", DOWN),
    h("latency/p50_ms", "latency p50 (ms)", DOWN),
    h("latency/p90_ms", "latency p90 (ms)", DOWN),
    h("latency/p99_ms", "latency p99 (ms)", DOWN),
    h("latency/max_ms", "latency max (ms)", DOWN),
    h("sent", "messages sent", None),
    h("received", "messages received", None),
    mib("window/server_peak_rss_kib", "server peak RSS (MiB)"),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

/// s2s: the chat rows (CPU and memory are both servers' together), then these.
const S2S_LINKS: &[Headline] = &[
    h(
        "links/rss_kib_per_connection",
        "RSS per idle s2s connection (KiB, both servers)",
        DOWN,
    ),
    h(
        "links/rss_delta_kib",
        "RSS of opening the links (KiB)",
        DOWN,
    ),
    h("links/s2s_connections", "s2s connections", None),
    h(
        "links/first_message_s",
        "first message there: link setup (s)",
        DOWN,
    ),
    h("links/first_message_back_s", "first message back (s)", DOWN),
];

const PRESENCE: &[Headline] = &[
    h("broadcasts_per_s", "presence broadcasts/s", UP),
    h(
        "server_cpu_us_per_broadcast",
        "server CPU µs per broadcast",
        DOWN,
    ),
    h("latency/p50_ms", "broadcast latency p50 (ms)", DOWN),
    h("latency/p99_ms", "broadcast latency p99 (ms)", DOWN),
    h("roster_contacts_avg", "mutual contacts per account", None),
    h(
        "server_cpu_ms_per_login",
        "server CPU ms per login with roster",
        DOWN,
    ),
    h("changes_sent", "presence changes sent", None),
    h(
        "broadcasts_expected",
        "broadcasts expected (changes × contacts)",
        None,
    ),
    h("broadcasts_received", "broadcasts received", None),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const PEP: &[Headline] = &[
    h("notifications_per_s", "PEP notifications to contacts/s", UP),
    h(
        "server_cpu_us_per_notification",
        "server CPU µs per notification",
        DOWN,
    ),
    h("latency/p50_ms", "notification latency p50 (ms)", DOWN),
    h("latency/p99_ms", "notification latency p99 (ms)", DOWN),
    h(
        "server_rss_kib_per_account",
        "server RSS per account online (KiB)",
        DOWN,
    ),
    h("roster_contacts_avg", "mutual contacts per account", None),
    h(
        "disco_queries_answered",
        "caps disco#info queries answered",
        None,
    ),
    h("publishes_sent", "nickname publishes sent", None),
    h(
        "notifications_expected",
        "notifications expected (publishes × contacts)",
        None,
    ),
    h("notifications_received", "notifications received", None),
    h(
        "own_notifications_received",
        "own notifications received",
        None,
    ),
    h(
        "server_cpu_ms_per_login",
        "server CPU ms per login with roster and caps",
        DOWN,
    ),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const MUC_JOIN: &[Headline] = &[
    h("join_latency/p50_ms", "join latency p50 (ms)", DOWN),
    h("join_latency/p99_ms", "join latency p99 (ms)", DOWN),
    h("join_total_s", "first join to last self-presence (s)", DOWN),
    h(
        "full_list_s",
        "first join until everyone has the full list (s)",
        DOWN,
    ),
    h("server_cpu_ms_per_join", "server CPU ms per join", DOWN),
    h(
        "server_rss_kib_per_occupant",
        "server RSS per idle occupant (KiB)",
        DOWN,
    ),
    mib("window/server_peak_rss_kib", "server peak RSS (MiB)"),
    h("joins", "joins completed", None),
    h("occupants_at_end", "occupants at the end", None),
    h("full_lists", "occupants with the full list", None),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const MUC: &[Headline] = &[
    h("delivered_per_s", "groupchat deliveries/s", UP),
    h(
        "server_cpu_us_per_delivery",
        "server CPU µs per delivered message",
        DOWN,
    ),
    h("latency/p50_ms", "latency p50 (ms)", DOWN),
    h("latency/p90_ms", "latency p90 (ms)", DOWN),
    h("latency/p99_ms", "latency p99 (ms)", DOWN),
    h("latency/max_ms", "latency max (ms)", DOWN),
    h(
        "latency_to_last/p50_ms",
        "latency to the last occupant p50 (ms)",
        DOWN,
    ),
    h(
        "latency_to_last/p99_ms",
        "latency to the last occupant p99 (ms)",
        DOWN,
    ),
    h("occupants", "occupants", None),
    h("senders", "senders", None),
    h("sent", "messages sent", None),
    h(
        "messages_to_everyone",
        "messages delivered to every occupant",
        None,
    ),
    h(
        "deliveries_expected",
        "deliveries expected (messages × occupants)",
        None,
    ),
    h("received", "deliveries received", None),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const MUC_ROOMS: &[Headline] = &[
    h(
        "server_rss_kib_per_idle_room",
        "server RSS per idle persistent room (KiB)",
        DOWN,
    ),
    h(
        "server_cpu_ms_per_room",
        "server CPU ms per room created",
        DOWN,
    ),
    h("first_join_ms", "first entry to a stored room (ms)", DOWN),
    h("rooms_created", "persistent rooms created", None),
    mib("window/server_rss_before_kib", "server RSS before (MiB)"),
    mib(
        "server_rss_idle_kib",
        "server RSS with the rooms idle (MiB)",
    ),
    h("window/server_cpu_s", "server CPU in window (s)", None),
    run_row("window/generator_cpu_s", "load generator CPU in window (s)"),
    run_row("window/other_cpu_s", "other processes' CPU (s)"),
];

const SCENARIO_ORDER: [&str; 13] = [
    "login",
    "idle",
    "chat",
    "presence",
    "idle_ws",
    "idle_bosh",
    "chat_ws",
    "pep",
    "muc_join",
    "muc",
    "muc_big",
    "muc_rooms",
    "s2s",
];

/// A result's scenario may be a variant such as `idle-10000` (one size of several).
fn kind(scenario: &str) -> &str {
    scenario.split('-').next().unwrap_or(scenario)
}

/// The usual order of a run, sizes ascending within a scenario, unknown ones last.
fn sort_key(scenario: &str) -> (usize, u64, String) {
    let k = kind(scenario);
    let order = SCENARIO_ORDER
        .iter()
        .position(|s| *s == k)
        .unwrap_or(SCENARIO_ORDER.len());
    let size = scenario
        .split_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0);
    (order, size, scenario.to_owned())
}

fn headlines(scenario: &str) -> Vec<&'static Headline> {
    let rows: &[Headline] = match scenario {
        "login" => LOGIN,
        "idle" | "idle_ws" | "idle_bosh" => IDLE,
        "chat" | "chat_ws" => CHAT,
        "pep" => PEP,
        "muc_join" => MUC_JOIN,
        "muc" | "muc_big" => MUC,
        "muc_rooms" => MUC_ROOMS,
        "presence" => PRESENCE,
        "s2s" => return CHAT.iter().chain(S2S_LINKS).collect(),
        _ => &[],
    };
    rows.iter().collect()
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(value, |v, key| v.get(key))
}

/// A number with about three significant digits.
fn format_number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub struct Input {
    pub results: Vec<Value>,
    pub ours: String,
    /// Order of the server columns; servers missing here follow in name order.
    pub servers: Vec<String>,
    /// The facts of this run.
    pub meta: Facts,
    /// The facts of the earlier runs that measured the kept scenarios, by scenario.
    pub kept: BTreeMap<String, Facts>,
    pub machine: Value,
}

/// Facts about this machine that matter for reading the numbers.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = read("/proc/meminfo");
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu,
        "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// The facts of one run (date, versions, sizes), as `--meta` gave them.
pub type Facts = BTreeMap<String, String>;

/// Adds to `results` the raw results of an earlier summary for every scenario `results` does
/// not have (a run of some scenarios only keeps the others' sections), and returns the facts
/// of the run that measured each kept scenario.
pub fn keep_earlier(earlier: &Value, results: &mut Vec<Value>) -> BTreeMap<String, Facts> {
    let have: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|r| r["scenario"].as_str().map(str::to_owned))
        .collect();
    let Some(scenarios) = earlier["scenarios"].as_object() else {
        return BTreeMap::new();
    };
    let mut kept = BTreeMap::new();
    for (name, section) in scenarios.iter().filter(|(s, _)| !have.contains(*s)) {
        if let Some(by_server) = section["results"].as_object() {
            results.extend(by_server.values().cloned());
        }
        kept.insert(name.clone(), provenance(earlier, name));
    }
    kept
}

/// Where a kept scenario was measured: its section's own `meta`, or in a summary written
/// before sections had one, the facts its header stacked as `earlier run: ` × k. There, the
/// `scenarios` list at level k + 1 names what the run of level k kept from the one before
/// it, so a scenario was measured by the run of the first level whose next list lacks it.
fn provenance(earlier: &Value, scenario: &str) -> Facts {
    let strings = |v: &Value| -> Facts {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    };
    let own = &earlier["scenarios"][scenario]["meta"];
    if own.is_object() {
        return strings(own);
    }
    const PREFIX: &str = "earlier run: ";
    let stacked = strings(&earlier["meta"]);
    let kept_at = |level: usize| {
        stacked
            .get(&format!("{}scenarios", PREFIX.repeat(level)))
            .is_some_and(|list| list.split(", ").any(|s| s == scenario))
    };
    let mut level = 0;
    while kept_at(level + 1) {
        level += 1;
    }
    let own_prefix = PREFIX.repeat(level);
    stacked
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(&own_prefix)?;
            (!name.starts_with(PREFIX) && name != "scenarios").then(|| (name.to_owned(), v.clone()))
        })
        .collect()
}

pub struct Output {
    pub markdown: String,
    pub json: Value,
}

pub fn summarize(input: &Input) -> Output {
    // scenario → server label → result
    let mut by_scenario: BTreeMap<String, BTreeMap<String, &Value>> = BTreeMap::new();
    for r in &input.results {
        let scenario = r["scenario"].as_str().unwrap_or("?").to_owned();
        let label = r["label"].as_str().unwrap_or("?").to_owned();
        by_scenario.entry(scenario).or_default().insert(label, r);
    }
    let mut md = String::from("# xmppd benchmark results\n\n");
    md.push_str(&format!(
        "Machine: {} cores, {}, {} GiB memory, Linux {}.\n\n",
        input.machine["nproc"],
        input.machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        input.machine["memory_gib"],
        input.machine["kernel"].as_str().unwrap_or("?"),
    ));
    for (k, v) in &input.meta {
        md.push_str(&format!("- {k}: {v}\n"));
    }
    if !input.kept.is_empty() {
        md.push_str("\nSections kept from earlier runs say so under their heading.\n");
    }
    md.push_str(
        "\nRatios are ours ÷ theirs: above 1 is better for rows marked ↑, below 1 for rows \
         marked ↓. See bench/README.md for what each number means.\n",
    );
    let mut scenarios_json = Map::new();
    // The usual order of a run first, anything else after.
    let mut scenarios: Vec<&String> = by_scenario.keys().collect();
    scenarios.sort_by_key(|name| sort_key(name));
    for scenario in scenarios {
        let servers = &by_scenario[scenario];
        let mut order: Vec<&String> = input
            .servers
            .iter()
            .filter(|s| servers.contains_key(*s))
            .collect();
        order.extend(servers.keys().filter(|s| !input.servers.contains(s)));
        let others: Vec<&String> = order
            .iter()
            .copied()
            .filter(|s| **s != input.ours && servers.contains_key(&input.ours))
            .collect();
        md.push_str(&format!("\n## {scenario}\n\n"));
        let facts = input.kept.get(scenario.as_str()).unwrap_or(&input.meta);
        if input.kept.contains_key(scenario.as_str()) {
            md.push_str("From an earlier run:\n");
            for (k, v) in facts.iter().filter(|(k, v)| input.meta.get(*k) != Some(v)) {
                md.push_str(&format!("- {k}: {v}\n"));
            }
            md.push('\n');
        }
        if let Some(params) = servers.values().find_map(|r| r["metrics"].get("params")) {
            md.push_str(&format!("Parameters: `{params}`\n\n"));
        }
        md.push_str("| metric |");
        for s in &order {
            md.push_str(&format!(" {s} |"));
        }
        for o in &others {
            md.push_str(&format!(" {} / {o} |", input.ours));
        }
        md.push('\n');
        md.push_str(&"|---".repeat(1 + order.len() + others.len()));
        md.push_str("|\n");

        md.push_str("| status |");
        for s in &order {
            md.push_str(&format!(
                " {} |",
                servers[*s]["status"].as_str().unwrap_or("?")
            ));
        }
        md.push_str(&" |".repeat(others.len()));
        md.push('\n');

        let mut rows = Vec::new();
        for hl in headlines(kind(scenario)) {
            let value_of = |s: &str| -> Option<f64> {
                let r = servers.get(s)?;
                if r["status"] != "ok" {
                    return None;
                }
                lookup(&r["metrics"], hl.path)?
                    .as_f64()
                    .map(|v| v * hl.scale)
            };
            let arrow = match hl.higher_is_better {
                Some(true) => " ↑",
                Some(false) => " ↓",
                None => "",
            };
            md.push_str(&format!("| {}{arrow} |", hl.name));
            let mut values = Map::new();
            for s in &order {
                let v = value_of(s);
                md.push_str(&format!(" {} |", v.map_or("–".into(), format_number)));
                values.insert(s.to_string(), json!(v));
            }
            let mut ratios = Map::new();
            for o in &others {
                let ratio = match (value_of(&input.ours), value_of(o)) {
                    (Some(a), Some(b)) if hl.ratio && b != 0.0 => Some(a / b),
                    _ => None,
                };
                md.push_str(&format!(
                    " {} |",
                    ratio.map_or("–".into(), |r| format!("{r:.2}"))
                ));
                ratios.insert(format!("{}/{o}", input.ours), json!(ratio));
            }
            md.push('\n');
            rows.push(json!({
                "metric": hl.path,
                "name": hl.name,
                "higher_is_better": hl.higher_is_better,
                "values": values,
                "ratios": ratios,
            }));
        }
        md.push_str("| errors |");
        for s in &order {
            md.push_str(&format!(" {} |", servers[*s]["errors_total"]));
        }
        md.push_str(&" |".repeat(others.len()));
        md.push('\n');
        for s in &order {
            if let Some(note) = servers[*s]["metrics"]["note"].as_str() {
                md.push_str(&format!("\n{s}: {note}\n"));
            }
            let errors = &servers[*s]["errors"];
            if errors.as_object().is_some_and(|e| !e.is_empty()) {
                md.push_str(&format!("\n{s} errors: `{errors}`\n"));
            }
        }
        scenarios_json.insert(
            scenario.clone(),
            json!({
                "headline": rows,
                "results": servers,
                "meta": facts,
            }),
        );
    }
    Output {
        markdown: md,
        json: json!({
            "machine": input.machine,
            "meta": input.meta,
            "ours": input.ours,
            "scenarios": scenarios_json,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, logins: f64, status: &str) -> Value {
        json!({
            "label": label, "scenario": "login", "status": status, "errors_total": 0,
            "errors": {},
            "metrics": {
                "logins_per_s": logins,
                "login_latency": {"p50_ms": 2.0},
                "params": {"logins": 10},
            },
        })
    }

    #[test]
    fn ratios_against_each_other_server() {
        let input = Input {
            results: vec![
                result("prosody", 100.0, "ok"),
                result("xmppd", 250.0, "ok"),
                result("ejabberd", 0.0, "failed"),
            ],
            ours: "xmppd".into(),
            servers: vec!["xmppd".into(), "prosody".into(), "ejabberd".into()],
            meta: BTreeMap::from([("date".into(), "today".into())]),
            kept: BTreeMap::new(),
            machine: json!({"nproc": 2}),
        };
        let out = summarize(&input);
        let header = "| metric | xmppd | prosody | ejabberd | xmppd / prosody | xmppd / ejabberd |";
        assert!(out.markdown.contains(header), "{}", out.markdown);
        assert!(out
            .markdown
            .contains("| logins/s ↑ | 250 | 100 | – | 2.50 | – |"));
        assert!(out.markdown.contains("| status | ok | ok | failed | | |"));
        let row = &out.json["scenarios"]["login"]["headline"][0];
        assert_eq!(row["ratios"]["xmppd/prosody"], json!(2.5));
        assert_eq!(row["ratios"]["xmppd/ejabberd"], Value::Null);
    }

    #[test]
    fn scenario_variants_sort_by_kind_then_size() {
        let mut names = vec![
            "presence",
            "idle-10000",
            "chat",
            "idle-1000",
            "login",
            "mine",
        ];
        names.sort_by_key(|n| sort_key(n));
        assert_eq!(
            names,
            [
                "login",
                "idle-1000",
                "idle-10000",
                "chat",
                "presence",
                "mine"
            ]
        );
        assert_eq!(kind("idle-10000"), "idle");
    }

    #[test]
    fn keeps_the_earlier_scenarios_only_with_their_own_facts() {
        let earlier = json!({
            "meta": {"date": "yesterday"},
            "scenarios": {
                "login": {"results": {"xmppd": result("xmppd", 1.0, "ok")}, "meta": {"date": "yesterday"}},
                "idle": {
                    "results": {"xmppd": {"label": "xmppd", "scenario": "idle"}},
                    "meta": {"date": "last week"},
                },
            },
        });
        let mut results = vec![result("xmppd", 2.0, "ok")];
        let kept = keep_earlier(&earlier, &mut results);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["metrics"]["logins_per_s"], json!(2.0));
        assert_eq!(results[1]["scenario"], "idle");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept["idle"]["date"], "last week");
    }

    #[test]
    fn facts_stacked_by_the_old_format_go_to_their_own_sections() {
        let earlier = json!({
            "meta": {
                "date": "d0",
                "earlier run: date": "d1",
                "earlier run: scenarios": "idle, chat",
                "earlier run: earlier run: date": "d2",
                "earlier run: earlier run: xmppd": "v2",
                // login was kept twice before, then measured again by the newest run.
                "earlier run: earlier run: scenarios": "chat, login",
            },
            "scenarios": {
                "login": {"results": {}},
                "idle": {"results": {"xmppd": {"label": "xmppd", "scenario": "idle"}}},
                "chat": {"results": {"xmppd": {"label": "xmppd", "scenario": "chat"}}},
            },
        });
        assert_eq!(
            keep_earlier(&earlier, &mut Vec::new())["login"],
            BTreeMap::from([("date".into(), "d0".into())])
        );
        let mut results = vec![result("xmppd", 2.0, "ok")];
        let kept = keep_earlier(&earlier, &mut results);
        assert!(!kept.contains_key("login"));
        assert_eq!(kept["idle"], BTreeMap::from([("date".into(), "d1".into())]));
        assert_eq!(
            kept["chat"],
            BTreeMap::from([("date".into(), "d2".into()), ("xmppd".into(), "v2".into())])
        );
        let input = Input {
            results,
            ours: "xmppd".into(),
            servers: vec!["xmppd".into()],
            meta: BTreeMap::from([("date".into(), "today".into())]),
            kept,
            machine: json!({"nproc": 2}),
        };
        let out = summarize(&input);
        assert_eq!(out.json["scenarios"]["login"]["meta"]["date"], "today");
        assert_eq!(out.json["scenarios"]["chat"]["meta"]["xmppd"], "v2");
        assert!(out
            .markdown
            .contains("## idle\n\nFrom an earlier run:\n- date: d1\n"));
        assert!(!out.markdown.contains("earlier run: "), "{}", out.markdown);
    }

    #[test]
    fn s2s_rows_read_the_link_metrics() {
        let s2s = |label: &str, cpu: f64, per_link: f64| {
            json!({
                "label": label, "scenario": "s2s", "status": "ok", "errors_total": 0,
                "errors": {},
                "metrics": {
                    "server_cpu_us_per_msg": cpu,
                    "links": {"rss_kib_per_connection": per_link, "s2s_connections": 2},
                },
            })
        };
        let input = Input {
            results: vec![s2s("xmppd", 30.0, 100.0), s2s("prosody", 120.0, 50.0)],
            ours: "xmppd".into(),
            servers: vec!["xmppd".into(), "prosody".into()],
            meta: BTreeMap::new(),
            kept: BTreeMap::new(),
            machine: json!({"nproc": 2}),
        };
        let md = summarize(&input).markdown;
        assert!(md.contains("## s2s"), "{md}");
        assert!(
            md.contains("| server CPU µs per message ↓ | 30 | 120 | 0.25 |"),
            "{md}"
        );
        assert!(
            md.contains("| RSS per idle s2s connection (KiB, both servers) ↓ | 100 | 50 | 2.00 |")
        );
        assert!(md.contains("| s2s connections | 2 | 2 | 1.00 |"));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(12.345), "12.3");
        assert_eq!(format_number(1.2345), "1.23");
        assert_eq!(format_number(0.01234), "0.012");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(20.0), "20");
    }
}
