//! The generator's command line, run as the benchmark runs it. (It also makes `cargo test`
//! build the binary, which the benchmark's smoke run in `scripts/test.sh` then reuses.)

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xmppd-bench"))
}

#[test]
fn free_port_prints_a_port_that_can_be_bound() {
    let out = bench().arg("free-port").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let port: u16 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn a_target_off_loopback_is_refused_before_connecting() {
    let out = bench()
        .args([
            "run",
            "--scenario",
            "idle",
            "--addr",
            "192.0.2.1:5222",
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only loopback addresses"), "{stderr}");
}

#[test]
fn a_negative_join_rate_is_refused() {
    let out = bench()
        .args(["run", "--scenario", "muc_join", "--join-rate=-1", "-n", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--join-rate"), "{stderr}");
}
