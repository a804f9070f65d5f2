//! The auth test against a real Linux PPTP server (the lab: Debian pptpd + pppd,
//! MS-CHAPv2, in a QEMU VM): `connexa_core::tunnel` logs in over a real TCP
//! control connection and a raw GRE socket, and tears down politely.
//!
//! Needs the lab and root (`tests/run.sh` as root starts it). Tests that
//! disturb the lab (stopping pptpd, dropping GRE) or that count the server's
//! sessions take the lab exclusively; the others share it.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use connexa_core::domain::{Event, Failure, Level, Outcome, Secret, Status, transition};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::tunnel::{self, AuthConfig, GreSocket, LoginReport};
use connexa_tests::lab::{Lab, Sessions, in_lab};

static LAB: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    LAB.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LAB.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn prober() -> LightProber {
    LightProber::new(ProbeConfig {
        icmp: None,
        attempts: 1,
        ..ProbeConfig::default()
    })
}

fn server(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.server, lab.pptp_port))
}

fn status_after(outcome: &Outcome) -> Status {
    transition(Status::NotTested, &Event::Tested(outcome.clone()))
        .expect("a test is always accepted")
}

fn wait_sessions_idle(lab: &Lab) -> Sessions {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = lab.sessions().expect("lab.sh sessions");
        if (s.pppd == 0 && s.pptpctrl == 0) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn lab_auth_right_password_is_ping_ok() {
    let lab = Lab::require();
    let _g = shared();
    let outcome = in_lab(&lab, || async {
        prober()
            .probe_auth(server(&lab), &lab.user, &Secret::new(lab.password.clone()))
            .await
            .expect("the auth test runs (root has CAP_NET_RAW)")
    });
    assert_eq!(outcome.failure, None, "{outcome:?}");
    assert_eq!(outcome.reached, Level::Auth);
    assert_eq!(status_after(&outcome), Status::PingOk);
    let m = &outcome.measurements;
    assert!(m.connect_ms.is_some() && m.handshake_ms.is_some() && m.ping_ms.is_some());
    assert!(
        m.pptp.as_ref().is_some_and(|p| !p.vendor.is_empty()),
        "pptpd's identity is kept: {m:?}"
    );
}

/// `tunnel::login` with the auth prober's retry of transient failures (a
/// connection lost before the server answered the control handshake; Debian's
/// pptpd drops a new connection whose first read is interrupted by SIGCHLD,
/// "MGR: dropped slow initial connection"): the attempts and pause of
/// `ProbeConfig::default()`.
async fn login(
    gre: &Arc<GreSocket>,
    addr: SocketAddrV4,
    user: &str,
    password: &Secret,
    cfg: &AuthConfig,
) -> LoginReport {
    let ProbeConfig {
        attempts, backoff, ..
    } = ProbeConfig::default();
    let mut pause = backoff;
    let mut report = tunnel::login(gre, addr, user, password, cfg).await;
    for _ in 1..attempts {
        if !report.is_transient() {
            break;
        }
        eprintln!("transient failure, trying again: {report:?}");
        tokio::time::sleep(pause).await;
        pause *= 2;
        report = tunnel::login(gre, addr, user, password, cfg).await;
    }
    report
}

#[test]
fn lab_auth_tears_down_every_step_politely() {
    let lab = Lab::require();
    let _g = shared();
    let (ok, bad): (LoginReport, LoginReport) = in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket as root");
        let addr = SocketAddrV4::new(lab.server, lab.pptp_port);
        let cfg = AuthConfig::default();
        let ok = login(
            &gre,
            addr,
            &lab.user,
            &Secret::new(lab.password.clone()),
            &cfg,
        )
        .await;
        let bad = login(&gre, addr, &lab.user, &Secret::new("wrong"), &cfg).await;
        assert_eq!(
            gre.live_routes(),
            0,
            "every call unregistered its GRE route"
        );
        (ok, bad)
    });
    assert_eq!(ok.reached, Level::Auth, "{ok:?}");
    assert!(ok.message.is_some());
    for r in [&ok, &bad] {
        let t = r.teardown;
        assert!(t.lcp_closed, "LCP Terminate-Request acknowledged: {r:?}");
        // pptpd's control process exits as soon as its pppd is gone, so the
        // call and control steps end either with the server's answer or with
        // the server closing the connection, never by our timeout.
        assert!(t.call_cleared || t.server_closed, "call cleared: {r:?}");
        assert!(
            t.control_stopped || t.server_closed,
            "control stopped: {r:?}"
        );
    }
    eprintln!(
        "teardown after success: {:?}; after rejection: {:?}",
        ok.teardown, bad.teardown
    );
}

#[test]
fn lab_auth_wrong_password_is_auth_failed_691() {
    let lab = Lab::require();
    let _g = shared();
    let outcome = in_lab(&lab, || async {
        prober()
            .probe_auth(server(&lab), &lab.user, &Secret::new("not-the-password"))
            .await
            .expect("the auth test runs")
    });
    assert_eq!(outcome.reached, Level::Light, "{outcome:?}");
    match &outcome.failure {
        Some(Failure::AuthRejected { code, .. }) => assert_eq!(*code, Some(691), "{outcome:?}"),
        other => panic!("expected AuthRejected 691, got {other:?}"),
    }
    assert_eq!(status_after(&outcome), Status::AuthFailed);
}

#[test]
fn lab_auth_unknown_user_is_auth_failed() {
    let lab = Lab::require();
    let _g = shared();
    let outcome = in_lab(&lab, || async {
        prober()
            .probe_auth(server(&lab), "mallory", &Secret::new(lab.password.clone()))
            .await
            .expect("the auth test runs")
    });
    assert_eq!(outcome.reached, Level::Light, "{outcome:?}");
    assert!(
        matches!(outcome.failure, Some(Failure::AuthRejected { .. })),
        "{outcome:?}"
    );
    eprintln!("unknown user: {:?}", outcome.failure);
    assert_eq!(status_after(&outcome), Status::AuthFailed);
}

#[test]
fn lab_auth_closed_port_is_ping_failed() {
    let lab = Lab::require();
    let _g = shared();
    let outcome = in_lab(&lab, || async {
        prober()
            .probe_auth(
                SocketAddr::from((lab.server, 1724)),
                &lab.user,
                &Secret::new(lab.password.clone()),
            )
            .await
            .expect("the auth test runs")
    });
    assert_eq!(outcome.reached, Level::None);
    assert_eq!(outcome.failure, Some(Failure::Refused));
    assert_eq!(status_after(&outcome), Status::PingFailed);
}

/// Blackholes GRE from the tests to the server (policy routing: `ip rule
/// ipproto gre` → a table whose only route is a blackhole), so the server's
/// pppd never hears our LCP while the control connection works; removed on drop.
struct BlackholeOurGre<'a>(&'a Lab);

const GRE_TABLE: &str = "4747";

impl<'a> BlackholeOurGre<'a> {
    fn install(lab: &'a Lab) -> Self {
        let guard = BlackholeOurGre(lab);
        lab.script(&[
            "exec",
            "ip",
            "route",
            "replace",
            "blackhole",
            "default",
            "table",
            GRE_TABLE,
        ])
        .expect("blackhole route");
        lab.script(&[
            "exec", "ip", "rule", "add", "ipproto", "gre", "table", GRE_TABLE, "priority", "100",
        ])
        .expect("ip rule ipproto gre");
        guard
    }
}

impl Drop for BlackholeOurGre<'_> {
    fn drop(&mut self) {
        let _ = self.0.script(&[
            "exec", "ip", "rule", "del", "ipproto", "gre", "table", GRE_TABLE, "priority", "100",
        ]);
        let _ = self
            .0
            .script(&["exec", "ip", "route", "flush", "table", GRE_TABLE]);
    }
}

/// pptpd is started again (and listening) whatever happens in the test.
struct RestartPptpd<'a>(&'a Lab);

impl Drop for RestartPptpd<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.script(&["pptpd-start"]) {
            eprintln!("pptpd-start: {e}");
        }
    }
}

/// Starts a login whose LCP cannot finish (our GRE is blackholed), runs
/// `lab.sh CMD` (pptpd-stop / pptpd-kill) once the server's pppd is up, starts
/// pptpd again, and returns the report and how long after CMD returned the
/// login ended.
fn interrupt_mid_lcp(lab: &Lab, cmd: &'static str) -> (LoginReport, Duration) {
    let slow_lcp = AuthConfig {
        lcp: FsmConfig {
            restart: Duration::from_secs(1),
            max_configure: 30,
            max_requests: 60,
            ..FsmConfig::default()
        },
        lcp_timeout: Duration::from_secs(60),
        ..AuthConfig::default()
    };
    let filter = BlackholeOurGre::install(lab);
    let restart = RestartPptpd(lab);
    let result = in_lab(lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket");
        let addr = SocketAddrV4::new(lab.server, lab.pptp_port);
        let password = Secret::new(lab.password.clone());
        let login = async {
            let r = tunnel::login(&gre, addr, &lab.user, &password, &slow_lcp).await;
            (r, Instant::now())
        };
        let interrupter = async {
            // wait until the server's pppd runs (it never hears our LCP)
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let lab = lab.clone();
                let s = tokio::task::spawn_blocking(move || lab.sessions())
                    .await
                    .expect("join")
                    .expect("sessions");
                if s.pppd >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let lab = lab.clone();
            tokio::task::spawn_blocking(move || lab.script(&[cmd]))
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            Instant::now()
        };
        let ((report, ended), interrupted) = tokio::join!(login, interrupter);
        (report, ended.saturating_duration_since(interrupted))
    });
    drop(restart);
    drop(filter);
    result
}

#[test]
fn lab_auth_silent_lcp_and_pptpd_stopped_or_killed_mid_lcp_fail_cleanly() {
    let lab = Lab::require();
    let _g = exclusive();
    let quick_lcp = AuthConfig {
        lcp: FsmConfig {
            restart: Duration::from_millis(500),
            max_configure: 4,
            ..FsmConfig::default()
        },
        ..AuthConfig::default()
    };

    // 1. The server never answers our LCP: a failure of its own kind, in
    //    about Max-Configure × restart, not a hang.
    let filter = BlackholeOurGre::install(&lab);
    let started = Instant::now();
    let outcome = in_lab(&lab, || async {
        prober()
            .with_auth_config(quick_lcp.clone())
            .probe_auth(server(&lab), &lab.user, &Secret::new(lab.password.clone()))
            .await
            .expect("the auth test runs")
    });
    let took = started.elapsed();
    drop(filter);
    assert_eq!(outcome.reached, Level::Light, "{outcome:?}");
    match &outcome.failure {
        Some(Failure::LcpFailed { detail }) => {
            assert!(detail.contains("no answer"), "{detail}")
        }
        other => panic!("expected LcpFailed (no answer), got {other:?}"),
    }
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // 2. pptpd stopped (SIGTERM) or killed (SIGKILL: the call vanishes without
    //    a word) while LCP is in progress: a clean LCP failure, promptly.
    for cmd in ["pptpd-stop", "pptpd-kill"] {
        let (report, took) = interrupt_mid_lcp(&lab, cmd);
        eprintln!("{cmd} mid-LCP: {report:?}");
        assert_eq!(report.reached, Level::Light, "{cmd}: {report:?}");
        match &report.failure {
            Some(Failure::LcpFailed { .. }) => {}
            other => panic!("{cmd}: expected LcpFailed, got {other:?}"),
        }
        let t = report.teardown;
        if cmd == "pptpd-kill" {
            assert!(
                t.server_closed,
                "{cmd}: the control connection just vanished: {t:?}"
            );
        } else {
            assert!(t.call_cleared || t.server_closed, "{cmd}: {t:?}");
        }
        assert!(
            took < Duration::from_secs(8),
            "{cmd}: the login ended {took:?} after the server went away, not promptly"
        );
    }

    // 3. The lab is back: a login works again.
    let outcome = in_lab(&lab, || async {
        prober()
            .probe_auth(server(&lab), &lab.user, &Secret::new(lab.password.clone()))
            .await
            .expect("the auth test runs")
    });
    assert_eq!(
        outcome.reached,
        Level::Auth,
        "after pptpd-start: {outcome:?}"
    );
}

#[test]
fn lab_auth_twenty_logins_at_once_all_succeed_and_end_cleanly() {
    let lab = Lab::require();
    let _g = exclusive();
    const N: usize = 20;
    assert!(
        lab.connections >= N,
        "pptpd allows {} connections",
        lab.connections
    );
    let before = wait_sessions_idle(&lab);
    assert_eq!(
        (before.pppd, before.pptpctrl),
        (0, 0),
        "lab idle before: {before:?}"
    );

    let (reports, stats) = in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket");
        let addr = SocketAddrV4::new(lab.server, lab.pptp_port);
        let cfg = AuthConfig::default();
        let password = Secret::new(lab.password.clone());
        let logins = (0..N).map(|_| {
            let gre = Arc::clone(&gre);
            let (cfg, password, user) = (&cfg, &password, &lab.user);
            async move { login(&gre, addr, user, password, cfg).await }
        });
        let reports = futures::future::join_all(logins).await;
        assert_eq!(gre.live_routes(), 0);
        (reports, gre.stats())
    });
    eprintln!("GRE socket: {stats:?}");
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.reached, Level::Auth, "login {i}: {r:?}");
        assert!(
            r.teardown.lcp_closed
                && (r.teardown.call_cleared || r.teardown.server_closed)
                && (r.teardown.control_stopped || r.teardown.server_closed),
            "login {i} teardown: {r:?}"
        );
    }

    let after = wait_sessions_idle(&lab);
    assert_eq!(
        (after.pppd, after.pptpctrl),
        (0, 0),
        "no pppd/pptpctrl left: {after:?}"
    );
    let started = after.pppd_started - before.pppd_started;
    let exited = after.pppd_exited - before.pppd_exited;
    assert_eq!(started, N as u64, "{before:?} -> {after:?}");
    assert_eq!(
        exited, N as u64,
        "every pppd exited (no orphan): {before:?} -> {after:?}"
    );
    assert_eq!(
        after.calls_finished - before.calls_finished,
        after.calls_started - before.calls_started,
        "every control connection finished: {before:?} -> {after:?}"
    );
    let log = lab.server_log().expect("server log");
    let terminated = log.matches("Connection terminated").count();
    assert!(
        terminated >= N,
        "pppd logged `Connection terminated` {terminated} times"
    );
}
