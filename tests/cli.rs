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
    // No terminal (stdin is not one here) and no password given: say how to give it.
    let (ok, _, err) = xmppd(&config, &["user", "add", "eve@localhost"]);
    assert!(!ok && err.contains("--password-stdin"), "{err}");
}

#[test]
fn user_commands_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port());
    let (ok, out, err) = xmppd(&config, &["check"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("certificates: ok"), "{out}");

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
