//! Helpers shared by the CLI's test binaries: a free port, and a `connexa sim`
//! fleet started as a child process on its own loopback block.
#![allow(dead_code)] // each test binary uses a subset

use std::io::Read;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

/// A `connexa sim` child process, killed when dropped (a failing test must
/// not leave its fleet running).
pub struct Sim(pub std::process::Child);

impl std::ops::Deref for Sim {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Sim {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for(path: &Path, child: &mut std::process::Child) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("sim exited early ({status}): {err}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no node list after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal_and_wait(child: &mut std::process::Child, signal: &str) -> std::process::ExitStatus {
    let ok = StdCommand::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "sim did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `connexa <args> sim ... --port P --first-ip 127.<block>.<pid>.1 --list LIST`
/// and waits until its node list is written. Returns the child and the port.
pub fn start_sim(global: &[&str], sim: &[&str], block: u8, list: &Path) -> (Sim, u16, String) {
    let port = free_port();
    let first_ip = format!("127.{block}.{}.1", std::process::id() % 200 + 20);
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"))
        .args(global)
        .arg("sim")
        .args(sim)
        .args(["--port", &port.to_string(), "--first-ip", &first_ip])
        .arg("--list")
        .arg(list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(list, &mut child);
    (Sim(child), port, first_ip)
}
