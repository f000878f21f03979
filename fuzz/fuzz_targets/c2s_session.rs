//! Whole client sessions through the in-memory framing: the input is everything a client
//! sends. The server must not panic, must end the connection in bounded time, and every
//! byte it sends must be well-formed XML (or the one-line HTTP refusal).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmppd_server::stream::MemoryFraming;
use xmppd_server::RunningServer;
use xmppd_xml::{Limits, StreamParser};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: RunningServer,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = xmppd_server::config::Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.listen.c2s = vec![];
    config.listen.c2s_direct_tls = vec![];
    config.listen.metrics = None;
    config.listen.http = vec![];
    config.sasl.scram_iterations = 4096;
    config.sasl.failure_delay_ms = 0;
    // The fuzzer is one address opening connection after connection.
    config.limits.new_connections_per_ip_per_second = 0;
    config.limits.unauthenticated_timeout_secs = 2;
    let server = runtime.block_on(async {
        let server = xmppd_server::start(config, xmppd_modules::standard)
            .await
            .unwrap();
        for user in ["alice", "bob"] {
            let account =
                xmppd_server::sasl::credentials::new_account(user, "localhost", "pw", 4096)
                    .unwrap();
            let accounts = &server.state.router.storage().accounts;
            accounts.create(&account).await.unwrap();
        }
        server
    });
    Fixture {
        runtime,
        server,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let output = fixture.runtime.block_on(async {
        let (mut client, server_end) = tokio::io::duplex(256 * 1024);
        let peer = "127.0.0.1:1".parse().unwrap();
        let framing = MemoryFraming::new(server_end, true);
        let (driver, _) =
            xmppd_server::c2s::connection(fixture.server.state.clone(), framing, peer);
        let task = tokio::spawn(driver.run(false));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut output = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut output));
        assert!(read.await.is_ok(), "the server did not end the connection");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the connection task ends")
            .expect("the connection task does not panic");
        output
    });
    if output.starts_with(b"HTTP/1.1 400") {
        return;
    }
    // Each stream restart (after TLS or SASL) begins a new XML document.
    let text = String::from_utf8_lossy(&output);
    for document in text.split("<?xml version='1.0'?>").filter(|d| !d.is_empty()) {
        let mut parser = StreamParser::new(Limits {
            max_stanza_size: 1 << 20,
            max_depth: 64,
            max_attributes: 64,
        });
        let mut rest = document.as_bytes();
        loop {
            match parser.feed(&mut rest) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the server sent malformed XML ({e:?}): {text}"),
            }
        }
    }
});
