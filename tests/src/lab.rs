//! The lab: a real Linux PPTP server (Debian pptpd + pppd, MS-CHAPv2,
//! MPPE-128) in a QEMU VM inside a private network namespace, run by
//! `tests/lab/lab.sh` (see `tests/lab/README.md`).
//!
//! `tests/run.sh` starts the lab and exports `CONNEXA_LAB=1` plus the
//! `CONNEXA_LAB_*` variables read here (the same lines `tests/lab/lab.sh env`
//! prints). A lab test:
//!
//! ```no_run
//! let lab = connexa_tests::lab::Lab::require();
//! lab.enter_netns().expect("enter the lab's network namespace");
//! // sockets created from now on, on this thread, live in the lab's namespace
//! let _ = std::net::TcpStream::connect((lab.server, lab.pptp_port));
//! ```
//!
//! Test functions that need the lab are named `lab_*`: `tests/run.sh` skips
//! them (`--skip lab_`) only when the lab cannot be started outside CI.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::sched::{CloneFlags, setns};

/// How to get a lab, printed when a lab test runs without one.
pub const HOW_TO_RUN: &str = "this test needs the PPTP lab (a real pptpd in a QEMU VM): run `tests/run.sh` as root, \
     or as root `tests/lab/lab.sh up && eval \"$(tests/lab/lab.sh env)\"` and then cargo test";

/// The running lab, as described by the `CONNEXA_LAB_*` environment.
#[derive(Debug, Clone)]
pub struct Lab {
    /// The harness script (`tests/lab/lab.sh`), for `sessions`, `pptpd-stop`, `shape`, ...
    pub script: PathBuf,
    /// Name of the network namespace the lab lives in.
    pub netns: String,
    /// The test side's own address inside the namespace (10.77.0.1).
    pub host_ip: Ipv4Addr,
    /// The PPTP server (10.77.0.2).
    pub server: Ipv4Addr,
    /// TCP port of pptpd's control channel.
    pub pptp_port: u16,
    /// The server's address inside the tunnel (10.78.0.1; clients get 10.78.0.100+).
    pub ppp_server: Ipv4Addr,
    /// A user pptpd accepts (`alice`).
    pub user: String,
    /// That user's password (`s3cret`: a fixed test credential, not a secret).
    pub password: String,
    /// pptpd's `connections` limit (at least 20 concurrent logins).
    pub connections: usize,
    /// URL of the fixed test file, to be fetched through the tunnel.
    pub file_url: String,
    /// Local copy of the test file (same bytes as the VM serves).
    pub file: PathBuf,
    /// Size of the test file in bytes.
    pub file_size: u64,
    /// sha256 of the test file, lowercase hex.
    pub file_sha256: String,
    /// The server's console + syslog (pptpd, pptpctrl, pppd).
    pub log: PathBuf,
}

/// Live and cumulative session counts from `lab.sh sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sessions {
    /// pppd processes running in the VM now.
    pub pppd: u64,
    /// pptpctrl processes (one per control connection) running now.
    pub pptpctrl: u64,
    /// pppd processes started since boot (from the log).
    pub pppd_started: u64,
    /// pppd processes that logged `Exit.` since boot.
    pub pppd_exited: u64,
    /// Control connections started since boot.
    pub calls_started: u64,
    /// Control connections finished since boot.
    pub calls_finished: u64,
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set ({HOW_TO_RUN})"))
}

fn parse<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    let raw = var(name)?;
    raw.parse()
        .map_err(|_| format!("{name}={raw:?} is not valid"))
}

impl Lab {
    /// The lab from the environment; `None` when `CONNEXA_LAB` is not set.
    ///
    /// # Errors
    /// `CONNEXA_LAB` is set but another variable is missing or malformed.
    pub fn from_env() -> Result<Option<Lab>, String> {
        if std::env::var_os("CONNEXA_LAB").is_none() {
            return Ok(None);
        }
        Ok(Some(Lab {
            script: var("CONNEXA_LAB_SH")?.into(),
            netns: var("CONNEXA_LAB_NETNS")?,
            host_ip: parse("CONNEXA_LAB_HOST_IP")?,
            server: parse("CONNEXA_LAB_SERVER")?,
            pptp_port: 1723,
            ppp_server: parse("CONNEXA_LAB_PPP_SERVER")?,
            user: var("CONNEXA_LAB_USER")?,
            password: var("CONNEXA_LAB_PASSWORD")?,
            connections: parse("CONNEXA_LAB_CONNECTIONS")?,
            file_url: var("CONNEXA_LAB_FILE_URL")?,
            file: var("CONNEXA_LAB_FILE")?.into(),
            file_size: parse("CONNEXA_LAB_FILE_SIZE")?,
            file_sha256: var("CONNEXA_LAB_FILE_SHA256")?,
            log: var("CONNEXA_LAB_LOG")?.into(),
        }))
    }

    /// The lab, or a panic that says how to start it: a lab test never passes
    /// silently without the lab.
    #[track_caller]
    pub fn require() -> Lab {
        match Lab::from_env() {
            Ok(Some(lab)) => lab,
            Ok(None) => panic!("CONNEXA_LAB is not set: {HOW_TO_RUN}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Moves the calling thread (only this thread) into the lab's network
    /// namespace, so sockets it creates from now on reach 10.77.0.2.
    /// Sockets keep their namespace when used from other threads; a tokio
    /// runtime built on this thread with `new_current_thread()` is fully
    /// inside. Needs root (CAP_SYS_ADMIN). A no-op when already inside
    /// (e.g. under `lab.sh exec`).
    ///
    /// # Errors
    /// The namespace does not exist, or the process lacks the privilege.
    pub fn enter_netns(&self) -> io::Result<()> {
        let path = PathBuf::from("/run/netns").join(&self.netns);
        let target = fs::metadata(&path)?;
        let current = fs::metadata("/proc/thread-self/ns/net")?;
        if (current.dev(), current.ino()) == (target.dev(), target.ino()) {
            return Ok(());
        }
        let file = fs::File::open(&path)?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "setns({}) failed: {e} (lab tests must run as root)",
                    path.display()
                ),
            )
        })?;
        let now = fs::metadata("/proc/thread-self/ns/net")?;
        if (now.dev(), now.ino()) != (target.dev(), target.ino()) {
            return Err(io::Error::other(
                "setns succeeded but the thread is not in the lab namespace",
            ));
        }
        Ok(())
    }

    /// Runs `lab.sh ARGS...` and returns its standard output.
    ///
    /// # Errors
    /// The script could not run or exited unsuccessfully (stderr in the message).
    pub fn script(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new(&self.script).args(args).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "lab.sh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The lab's account as a node just added (id 1, `not_tested`).
    pub fn node(&self) -> connexa_core::domain::Node {
        connexa_core::domain::Node::added(
            connexa_core::domain::NodeId(1),
            self.server.into(),
            self.pptp_port,
            self.user.clone(),
            connexa_core::domain::Secret::new(self.password.clone()),
            chrono::Utc::now(),
        )
    }

    /// The server's log so far (console + syslog of pptpd, pptpctrl, pppd).
    ///
    /// # Errors
    /// The log file cannot be read.
    pub fn server_log(&self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&fs::read(&self.log)?).into_owned())
    }

    /// Live pppd/pptpctrl processes in the VM and cumulative counts from its
    /// log: after every client has hung up, `pppd == 0 && pptpctrl == 0`
    /// and `pppd_started == pppd_exited` (no orphan pppd).
    ///
    /// # Errors
    /// The control channel to the VM failed or answered something unexpected.
    pub fn sessions(&self) -> io::Result<Sessions> {
        let text = self.script(&["sessions"])?;
        let mut s = Sessions::default();
        let mut seen = 0;
        for pair in text.split_whitespace() {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse() else { continue };
            let slot = match key {
                "pppd" => &mut s.pppd,
                "pptpctrl" => &mut s.pptpctrl,
                "pppd_started" => &mut s.pppd_started,
                "pppd_exited" => &mut s.pppd_exited,
                "calls_started" => &mut s.calls_started,
                "calls_finished" => &mut s.calls_finished,
                _ => continue,
            };
            *slot = value;
            seen += 1;
        }
        if seen != 6 {
            return Err(io::Error::other(format!(
                "unexpected `lab.sh sessions` output: {text:?}"
            )));
        }
        Ok(s)
    }
}

/// The lab has one server and one namespace: the lab tests of a test binary
/// take turns by holding this guard (a test that panicked does not block the
/// others).
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LAB: Mutex<()> = Mutex::new(());
    LAB.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on a current-thread tokio runtime on this thread, moved into the
/// lab's namespace first: every socket, TUN device, process and rule the
/// test makes from there lives in the lab's namespace.
///
/// # Panics
/// The namespace cannot be entered (not root) or no runtime can be built.
pub fn in_lab<F: std::future::Future>(lab: &Lab, f: impl FnOnce() -> F) -> F::Output {
    lab.enter_netns()
        .expect("enter the lab's network namespace (run as root)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(f())
}
