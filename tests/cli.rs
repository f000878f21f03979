//! The `xmppd` binary: account commands, `check`, and `serve` with a config file, including
//! a graceful stop on SIGTERM.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{free_port, write_config, xmppd, KillOnDrop};
use common::Raw;

#[test]
fn check_refuses_a_bad_log_level_and_user_add_explains_the_missing_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[log]\nlevel = \"verbose!!\"\n");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let (ok, _, err) = xmppd(&bad, &["check"]);
    assert!(!ok && err.contains("log.level"), "{err}");
    assert_eq!(status_of(&check_json(&bad), "log.level"), "fail");
    // No terminal (stdin is not one here) and no password given: say how to give it.
    let (ok, _, err) = xmppd(&config, &["user", "add", "eve@localhost"]);
    assert!(!ok && err.contains("--password-stdin"), "{err}");
}

#[test]
fn user_commands_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port());
    let report = check_json(&config);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        status_of(&report, "certificate localhost"),
        "ok",
        "{report}"
    );

    let (ok, out, _) = xmppd(
        &config,
        &["user", "add", "Alice@localhost", "--password", "pw1"],
    );
    assert!(
        ok && out.contains("created alice@localhost"),
        "JIDs are normalised: {out}"
    );
    let (ok, _, err) = xmppd(
        &config,
        &["user", "add", "alice@localhost", "--password", "pw1"],
    );
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = xmppd(
        &config,
        &["user", "add", "bob@elsewhere", "--password", "x"],
    );
    assert!(!ok && err.contains("not served"), "{err}");
    let (ok, _, err) = xmppd(&config, &["user", "add", "not a jid@@", "--password", "x"]);
    assert!(!ok && err.contains("not a valid JID"), "{err}");

    // --password-stdin reads one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args([
            "user",
            "add",
            "bob@localhost",
            "--password-stdin",
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    assert!(child.wait().unwrap().success());

    let (ok, out, _) = xmppd(&config, &["user", "list", "localhost"]);
    assert!(ok);
    assert_eq!(out, "alice@localhost\nbob@localhost\n");
    let (ok, _, _) = xmppd(
        &config,
        &["user", "passwd", "alice@localhost", "--password", "pw2"],
    );
    assert!(ok);
    let (ok, _, err) = xmppd(
        &config,
        &["user", "passwd", "nobody@localhost", "--password", "x"],
    );
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, _, _) = xmppd(&config, &["user", "del", "bob@localhost"]);
    assert!(ok);
    let (ok, _, err) = xmppd(&config, &["user", "del", "bob@localhost"]);
    assert!(!ok && err.contains("does not exist"), "{err}");

    // The database never holds the password itself.
    let db = std::fs::read(dir.path().join("data/xmppd.sqlite")).unwrap();
    let wal = std::fs::read(dir.path().join("data/xmppd.sqlite-wal")).unwrap_or_default();
    for haystack in [&db, &wal] {
        assert!(
            !haystack.windows(3).any(|w| w == b"pw2"),
            "plain password stored"
        );
    }

    std::fs::write(&config, "[server]\ndomian = []\n").unwrap();
    let (ok, _, err) = xmppd(&config, &["check"]);
    assert!(!ok && err.contains("unknown field"), "{err}");
}

/// `xmppd check --json`, parsed.
fn check_json(config: &std::path::Path) -> serde_json::Value {
    let (_, out, err) = xmppd(config, &["check", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"))
}

/// The status of the first check whose name starts with `name`.
fn status_of(report: &serde_json::Value, name: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with(name))
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

/// Writes a certificate for `names` valid until `not_after` (and its key) into `dir`.
fn certificate(
    dir: &std::path::Path,
    names: &[&str],
    not_after: (i32, u8, u8),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    let tag = names[0].replace('*', "star");
    let (c, k) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// A config serving localhost with this certificate, on free ports, data under `dir/data`.
fn config_with(
    dir: &std::path::Path,
    name: &str,
    (cert, key): (String, String),
    c2s: u16,
) -> std::path::PathBuf {
    let text = format!(
        "[server]\ndomains = [\"localhost\"]\ndata_dir = {data:?}\n\
         [listen]\nc2s = [\"127.0.0.1:{c2s}\"]\nc2s_direct_tls = []\nmetrics = \"127.0.0.1:{metrics}\"\nhttp = []\n\
         [tls]\ncertificates = [{{ domain = \"localhost\", cert = {cert:?}, key = {key:?} }}]\n",
        data = dir.join("data"),
        metrics = free_port(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_catches_wrong_and_expired_certificates_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A certificate for another domain fails.
    let wrong = config_with(
        d,
        "wrong",
        certificate(d, &["other.example"], (2099, 1, 1)),
        free_port(),
    );
    let report = check_json(&wrong);
    assert_eq!(report["ok"], false);
    assert_eq!(
        status_of(&report, "certificate localhost"),
        "fail",
        "{report}"
    );
    // So does one for the domain alone while the MUC and pubsub services use subdomains.
    let bare = config_with(
        d,
        "bare",
        certificate(d, &["localhost"], (2099, 1, 1)),
        free_port(),
    );
    let report = check_json(&bare);
    let hosts_in_use = report.to_string().contains(".localhost");
    let expected = if hosts_in_use { "fail" } else { "ok" };
    assert_eq!(
        status_of(&report, "certificate localhost"),
        expected,
        "{report}"
    );
    // An expired one fails; a valid one for the domain and its subdomains passes.
    let both = ["localhost", "*.localhost"];
    let expired = config_with(
        d,
        "expired",
        certificate(d, &both, (2021, 1, 1)),
        free_port(),
    );
    assert_eq!(
        status_of(&check_json(&expired), "certificate localhost"),
        "fail"
    );
    let good = config_with(d, "good", certificate(d, &both, (2099, 1, 1)), free_port());
    let report = check_json(&good);
    assert_eq!(report["ok"], true, "{report}");
    // A listen address another program holds is reported.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let busy = config_with(d, "busy", certificate(d, &both, (2099, 1, 1)), port);
    let report = check_json(&busy);
    assert_eq!(
        status_of(&report, &format!("listen.c2s 127.0.0.1:{port}")),
        "fail",
        "{report}"
    );
    // None of this created the data directory, a database or a certificate.
    assert!(!d.join("data").exists(), "check left files behind");
}

#[tokio::test]
async fn serve_logs_in_accounts_added_while_running_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    // Everything the server logs, at the most verbose level, to check no secret leaks.
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server did not listen");
    // Accounts created by the CLI while the server runs can log in at once.
    let (ok, _, err) = xmppd(
        &config,
        &[
            "user",
            "add",
            "carol@localhost",
            "--password",
            common::PASSWORD,
        ],
    );
    assert!(ok, "{err}");
    let (mut raw, jid) = Raw::login(addr, "carol", "cli").await;
    assert_eq!(jid, "carol@localhost/cli");
    raw.sync().await;

    // `user del` goes through the running server: the account's session ends at once.
    let (ok, _, err) = xmppd(
        &config,
        &[
            "user",
            "add",
            "dave@localhost",
            "--password",
            common::PASSWORD,
        ],
    );
    assert!(ok, "{err}");
    let (mut dave, _) = Raw::login(addr, "dave", "cli").await;
    dave.sync().await;
    let (ok, out, err) = xmppd(&config, &["user", "del", "dave@localhost"]);
    assert!(
        ok && out.contains("through the running server"),
        "{out} {err}"
    );
    let ended = dave.read_to_close().await;
    assert!(
        ended.contains("<not-authorized") && ended.contains("the account was deleted"),
        "{ended}"
    );
    let (_, list, _) = xmppd(&config, &["user", "list"]);
    assert!(!list.contains("dave"), "{list}");
    let (ok, _, err) = xmppd(&config, &["user", "del", "dave@localhost"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    // What the server created is readable by its own user only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.path().join("data");
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&data), 0o700, "data directory");
        for file in [
            "xmppd.sqlite",
            "xmppd.sqlite-wal",
            "server.secret",
            "xmppd.sock",
        ] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
    }
    // A second server on the same data directory refuses to start.
    let (ok, _, err) = xmppd(&config, &["serve"]);
    assert!(
        !ok && err.contains("another xmppd serves this data directory"),
        "{err}"
    );

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let all = raw.read_to_close().await;
    assert!(
        all.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{all}"
    );
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = server.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("server exits after SIGTERM").success());
    assert!(
        !dir.path().join("data/xmppd.sock").exists(),
        "the admin socket is removed on exit"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("authenticated"), "the log is there: {log}");
    use base64::Engine;
    let payload =
        base64::engine::general_purpose::STANDARD.encode(format!("\0carol\0{}", common::PASSWORD));
    assert!(!log.contains(common::PASSWORD), "password in the log");
    assert!(!log.contains(&payload), "SASL payload in the log");
}

/// The log lines whose message is `message`, each as its `key=value` fields.
fn log_events(log: &str, message: &str) -> Vec<std::collections::HashMap<String, String>> {
    log.lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|field| field.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn the_default_log_level_tells_an_admin_what_happened_to_each_connection() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    let (ok, _, err) = xmppd(
        &config,
        &[
            "user",
            "add",
            "carol@localhost",
            "--password",
            common::PASSWORD,
        ],
    );
    assert!(ok, "{err}");
    let log_path = dir.path().join("server.log");
    let server =
        common::binary::serve(&config, c2s, std::fs::File::create(&log_path).unwrap()).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    // A login that closes its stream.
    let (mut raw, _) = Raw::login(addr, "carol", "logs").await;
    raw.sync().await;
    raw.send("</stream:stream>").await;
    raw.read_to_close().await;
    // A wrong password, named account.
    let (mut raw, _) = Raw::secure(addr).await;
    let reply = raw.auth_plain("carol", "not the password").await;
    assert!(reply.contains("<not-authorized"), "{reply}");
    drop(raw);
    // A client that sends garbage gets a stream error.
    let mut raw = Raw::connect(addr).await;
    raw.open().await;
    raw.send("<a><b></a>").await;
    raw.read_to_close().await;

    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&log_path).unwrap();
        if log_events(&log, "connection closed").len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    let opened = log_events(&log, "connection opened");
    assert!(
        opened.len() >= 3
            && opened
                .iter()
                .all(|e| e.get("kind").map(String::as_str) == Some("c2s")),
        "{log}"
    );
    let closed = log_events(&log, "connection closed");
    let by_reason = |reason: &str| {
        closed
            .iter()
            .find(|e| e.get("reason").map(String::as_str) == Some(reason))
    };
    let clean = by_reason("peer-closed").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(
        clean.get("account").map(String::as_str),
        Some("carol@localhost/logs"),
        "{log}"
    );
    assert!(clean.contains_key("secs"), "{log}");
    assert!(by_reason("not-well-formed").is_some(), "{log}");
    let failed = log_events(&log, "authentication failed");
    assert_eq!(
        failed
            .first()
            .and_then(|e| e.get("account"))
            .map(String::as_str),
        Some("carol"),
        "{log}"
    );
    assert!(
        !log.contains("not the password") && !log.contains(common::PASSWORD),
        "a password in the log"
    );
}

/// The leaf certificate's SHA-256 as a new client sees it.
async fn served_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    let (raw, _) = Raw::secure(addr).await;
    raw.tls_server_end_point()
}

#[tokio::test]
async fn sighup_and_reload_swap_the_certificate_and_keep_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    let install = || {
        let (c, k) = common::pki().domain_cert("localhost");
        std::fs::copy(c, &cert).unwrap();
        std::fs::copy(k, &key).unwrap();
    };
    install();
    let config = dir.path().join("xmppd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {data:?}\n[listen]\nc2s = [\"127.0.0.1:{c2s}\"]\n\
             c2s_direct_tls = []\nmetrics = \"127.0.0.1:{metrics}\"\nhttp = []\n\
             [tls]\ncertificates = [{{ domain = \"localhost\", cert = {cert:?}, key = {key:?} }}]\n\
             [sasl]\nscram_iterations = 4096\n",
            data = dir.path().join("data"),
            metrics = free_port(),
        ),
    )
    .unwrap();
    let (ok, _, err) = xmppd(
        &config,
        &[
            "user",
            "add",
            "carol@localhost",
            "--password",
            common::PASSWORD,
        ],
    );
    assert!(ok, "{err}");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let server = common::binary::serve(&config, c2s, log).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let (mut session, _) = Raw::login(addr, "carol", "stays").await;
    session.sync().await;
    let first = served_certificate(addr).await;

    // The ACME client renews; SIGHUP makes new connections get the new certificate.
    install();
    let status = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut second = first.clone();
    for _ in 0..100 {
        second = served_certificate(addr).await;
        if second != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(first, second, "SIGHUP did not swap the certificate");
    session.sync().await;

    // `xmppd reload` does the same through the admin socket, and says what it did.
    install();
    let (ok, out, err) = xmppd(&config, &["reload"]);
    assert!(ok && out.contains("reloaded 1 certificates"), "{out}{err}");
    assert_ne!(served_certificate(addr).await, second);
    session.sync().await;

    // The log level applies at once: at "warn" a new connection is not logged, back at
    // "info" it is again.
    let text = std::fs::read_to_string(&config).unwrap();
    let log_path = dir.path().join("server.log");
    for (level, logged) in [("warn", false), ("info", true)] {
        std::fs::write(&config, format!("{text}[log]\nlevel = \"{level}\"\n")).unwrap();
        let (ok, out, err) = xmppd(&config, &["reload"]);
        assert!(
            ok && out.contains(&format!("log level \"{level}\"")),
            "{out}{err}"
        );
        assert!(!out.contains("after a restart"), "{out}");
        let before = std::fs::read_to_string(&log_path).unwrap().len();
        let (mut other, _) = Raw::login(addr, "carol", level).await;
        other.sync().await;
        let after = std::fs::read_to_string(&log_path).unwrap();
        let new = &after[before..];
        assert_eq!(
            new.contains("connection opened"),
            logged,
            "at {level}: {new}"
        );
    }
    session.sync().await;
    drop(server);
}

#[tokio::test]
async fn under_systemd_it_reports_ready_reloading_stopping_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    // systemd names the watched process: a shell that execs keeps its pid for xmppd.
    let server = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\"")
            .arg(env!("CARGO_BIN_EXE_xmppd"))
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut seen = Vec::new();
    let receive_until = |want: &str, seen: &mut Vec<String>| {
        let mut buf = [0u8; 512];
        for _ in 0..200 {
            let n = socket.recv(&mut buf).expect("a notification");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == want) {
                return;
            }
        }
        panic!("no {want} among {seen:?}");
    };
    receive_until("READY=1", &mut seen);
    receive_until("WATCHDOG=1", &mut seen);
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    receive_until("RELOADING=1", &mut seen);
    receive_until("READY=1", &mut seen);
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    receive_until("STOPPING=1", &mut seen);
    drop(server);
}

#[tokio::test]
async fn the_container_entrypoint_serves_outside_a_container() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/container/Containerfile"
    ))
    .unwrap();
    let array = |directive: &str| -> Vec<String> {
        let line = file
            .lines()
            .find(|l| l.starts_with(directive))
            .unwrap_or_else(|| panic!("no {directive}"));
        serde_json::from_str(line[directive.len()..].trim()).unwrap()
    };
    let command: Vec<String> = array("ENTRYPOINT")
        .into_iter()
        .chain(array("CMD"))
        .collect();
    // The image's config, with its paths and ports moved somewhere a test may use.
    let dir = tempfile::tempdir().unwrap();
    let (c2s, tls, metrics) = (free_port(), free_port(), free_port());
    let image_config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/container/xmppd.toml"
    ))
    .unwrap()
    .replace(
        "/var/lib/xmppd",
        &dir.path().join("data").display().to_string(),
    )
    .replace("0.0.0.0:5222", &format!("127.0.0.1:{c2s}"))
    .replace("0.0.0.0:5223", &format!("127.0.0.1:{tls}"))
    .replace("0.0.0.0:5280", &format!("127.0.0.1:{metrics}"));
    let config = dir.path().join("xmppd.toml");
    std::fs::write(&config, image_config).unwrap();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| {
            if a == "/etc/xmppd/xmppd.toml" {
                config.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    assert_eq!(command[0], "/usr/local/bin/xmppd");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the image's command did not serve");
    let mut raw = Raw::connect(addr).await;
    let features = raw.open().await;
    assert!(features.contains("starttls"), "{features}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_fields_as_keys() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[log]\nformat = \"json\"\n");
    std::fs::write(&config, text).unwrap();
    let log_path = dir.path().join("server.log");
    let server =
        common::binary::serve(&config, c2s, std::fs::File::create(&log_path).unwrap()).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let mut raw = Raw::connect(addr).await;
    raw.open().await;
    raw.send("</stream:stream>").await;
    raw.read_to_close().await;
    let mut closed = None;
    for _ in 0..100 {
        let log = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        // (The harness's own probe for the port closes without a word first.)
        closed = lines.into_iter().find(|v| {
            v["fields"]["message"] == "connection closed" && v["fields"]["reason"] == "peer-closed"
        });
        if closed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let closed = closed.expect("a connection closed event");
    assert_eq!(closed["fields"]["reason"], "peer-closed", "{closed}");
    assert_eq!(closed["fields"]["kind"], "c2s", "{closed}");
    assert_eq!(closed["level"], "INFO", "{closed}");
}

#[test]
fn the_readme_table_and_the_doap_file_match_what_the_code_supports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let defaults = std::path::Path::new(root).join("xmppd.example.toml");
    let (ok, table, err) = xmppd(&defaults, &["features"]);
    assert!(ok, "{err}");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("<!-- features: generated by `xmppd features` -->\n")
        .unwrap();
    let body = &readme[start..];
    let body = &body[body.find('\n').unwrap() + 1..body.find("<!-- /features -->").unwrap()];
    assert_eq!(body, table, "README's table is stale: run `xmppd features`");
    let (ok, doap, _) = xmppd(&defaults, &["features", "--doap"]);
    assert!(ok);
    let file = std::fs::read_to_string(format!("{root}/xmppd.doap")).unwrap();
    assert_eq!(
        file, doap,
        "xmppd.doap is stale: run `xmppd features --doap > xmppd.doap`"
    );
    // It is XML, and lists the XEPs with their status.
    let parsed = xmppd_xml::parse_fragment(
        doap.trim_start_matches(|c| c != '>')
            .trim_start_matches('>'),
        "",
    )
    .unwrap();
    assert_eq!(parsed.name(), "RDF");
    assert!(doap.contains("https://xmpp.org/extensions/xep-0045.html"));
}

/// `xmppd room …`: without a server the CLI runs the MUC module itself on the storage;
/// with one it goes through the running server, which owns the rooms' state.
#[tokio::test]
async fn room_commands_work_with_and_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    let room = "team@conference.localhost";
    let (ok, out, err) = xmppd(
        &config,
        &[
            "room",
            "create",
            room,
            "--owner",
            "alice@localhost",
            "--name",
            "The team",
        ],
    );
    assert!(ok && out.trim() == format!("created {room}"), "{out} {err}");
    let (ok, out, err) = xmppd(&config, &["room", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{room} persistent idle"));

    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let _server = common::binary::serve(&config, c2s, log).await;
    let (ok, out, err) = xmppd(&config, &["room", "info", room]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"name: The team"), "{out}");
    assert!(lines.contains(&"owners: alice@localhost"), "{out}");
    // Errors come back from the server as a failing exit with its words.
    let (ok, _, err) = xmppd(&config, &["room", "info", "nope@conference.localhost"]);
    assert!(!ok && err.contains("there is no room"), "{err}");
    let (ok, out, err) = xmppd(&config, &["room", "destroy", room, "--reason", "done"]);
    assert!(
        ok && out.trim() == format!("destroyed {room}"),
        "{out} {err}"
    );
    let (ok, out, _) = xmppd(&config, &["room", "list"]);
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out, _) = xmppd(&config, &["room", "help"]);
    assert!(ok && out.contains("usage: xmppd room list"), "{out}");
}

/// With federation on, `check` says whether peers would accept each certificate (RFC 6125
/// under `[s2s] ca_file`, or the system's roots), and fails when that leaves nothing to
/// authenticate with.
#[test]
fn check_tells_whether_peers_would_verify_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write_config(dir.path(), free_port(), free_port());
    let has_item = |report: &serde_json::Value| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"].as_str().unwrap().starts_with("federation"))
    };
    assert!(!has_item(&check_json(&plain)), "federation is off");
    // A two-label domain: webpki, like browsers, does not match `*.localhost` wildcards.
    let (cert, key) = common::pki().domain_cert("chat.test");
    let base = format!(
        "[server]\ndomains = [\"chat.test\"]\ndata_dir = {data:?}\n\
         [listen]\nc2s = []\nc2s_direct_tls = []\nhttp = []\ns2s = [\"127.0.0.1:{port}\"]\n\
         [tls]\ncertificates = [{{ domain = \"chat.test\", cert = {cert:?}, key = {key:?} }}]\n",
        data = dir.path().join("data"),
        port = free_port(),
    );
    let ca = common::pki().ca_file.clone();
    // A CA that did not sign it: what peers trusting other roots see.
    let other_ca = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    for (extra, status) in [
        (format!("[s2s]\nca_file = {ca:?}\n"), "ok"),
        (format!("[s2s]\nca_file = {other_ca:?}\n"), "warning"),
        (
            format!("[s2s]\nca_file = {other_ca:?}\ndialback = false\n"),
            "fail",
        ),
    ] {
        let config = dir.path().join("s2s.toml");
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let report = check_json(&config);
        assert_eq!(
            status_of(&report, "federation certificate chat.test"),
            status,
            "{extra}: {report}"
        );
        assert_eq!(report["ok"], status != "fail", "{report}");
    }
}

/// Under systemd with stderr on the journal (JOURNAL_STREAM names that stream), lines carry
/// their priority for journald and no timestamp of their own.
#[tokio::test]
async fn logs_to_the_journal_carry_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let c2s = free_port();
    let config = write_config(dir.path(), c2s, free_port());
    let log_path = dir.path().join("journal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for line in &lines {
        let rest = line
            .strip_prefix("<6>")
            .or_else(|| line.strip_prefix("<4>"))
            .unwrap_or_else(|| panic!("no priority prefix: {line:?}"));
        assert!(
            rest.trim_start().starts_with("INFO") || rest.trim_start().starts_with("WARN"),
            "a timestamp or something else before the level: {line:?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("listening for clients")),
        "{text}"
    );
}

/// Run as its own unprivileged user (as the systemd unit does) with a permissive umask, the
/// server creates every file and directory of its data directory for that user alone.
/// Needs root to switch users; elsewhere it says so and checks nothing.
#[tokio::test]
async fn serve_as_an_unprivileged_user_keeps_its_files_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" || which("setpriv").is_none() {
        eprintln!("skipped: switching to an unprivileged user needs root and setpriv");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    let open = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap()
    };
    open(dir.path());
    // Its own copies, where the unprivileged user can read them.
    let binary = dir.path().join("xmppd");
    std::fs::copy(env!("CARGO_BIN_EXE_xmppd"), &binary).unwrap();
    open(&binary);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let c2s = free_port();
    let config = dir.path().join("xmppd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {data:?}\n[listen]\nc2s = [\"127.0.0.1:{c2s}\"]\n\
             c2s_direct_tls = []\nhttp = []\n",
            data = home.join("data"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = KillOnDrop(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg("umask 022; exec \"$0\" serve --config \"$1\"")
            .arg(&binary)
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the server did not start as an unprivileged user");
    // Everything under the data directory: the database and its WAL, the secret, the
    // socket, the generated certificate and key.
    let mut seen = 0;
    let mut todo = vec![home.join("data")];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            meta.uid(),
            NOBODY,
            "{} is not the server user's",
            path.display()
        );
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "crt") {
            // A certificate is public (every client is shown it); nobody else may change it.
            assert_eq!(mode & 0o022, 0, "{}", path.display());
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} entries in the data directory");
    drop(server);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
