//! Running the real `xmppd` binary: its commands, and `serve` as a child process that is
//! always stopped (by PID) when the test ends.

use std::process::{Command, Stdio};
use std::time::Duration;

pub fn xmppd(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xmppd"));
    cmd.args(args).arg("--config").arg(config);
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops the server process however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write_config(dir: &std::path::Path, c2s: u16, tls: u16) -> std::path::PathBuf {
    let pki = super::pki();
    let path = dir.join("xmppd.toml");
    let text = format!(
        "[server]\ndomains = [\"localhost\"]\ndata_dir = {data:?}\n\
         [listen]\nc2s = [\"127.0.0.1:{c2s}\"]\nc2s_direct_tls = [\"127.0.0.1:{tls}\"]\n\
         metrics = \"127.0.0.1:{metrics}\"\nhttp = []\n\
         [tls]\ncertificates = [{{ domain = \"localhost\", cert = {cert:?}, key = {key:?} }}]\n\
         [sasl]\nscram_iterations = 4096\n",
        data = dir.join("data"),
        metrics = free_port(),
        cert = pki.cert_file,
        key = pki.key_file,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `xmppd serve` with `config`, its log going to `log`; waits until `c2s` listens.
pub async fn serve(config: &std::path::Path, c2s: u16, log: std::fs::File) -> KillOnDrop {
    let server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            // The config's log level, not the caller's environment, sets what is logged.
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{c2s}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not listen on {addr}");
}
