//! Drives connexa-core's sans-IO PPTP login (LCP → MS-CHAPv2) against its server
//! side, entirely in memory with fake time: no sockets, no root. Shows the outcome
//! of a good login, a wrong password, an unknown user and a silent server, then
//! measures in-memory logins per second against a baseline of the bare MS-CHAPv2
//! crypto in the same process.
//!
//! Run: `cargo run -p example-pptp-login` (add `--release` for real figures).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::Secret;
use connexa_core::pptp::login::{
    LoginClient, LoginConfig, LoginOutcome, LoginPhase, LoginServer, ServerConfig,
};
use connexa_core::pptp::mschapv2::{generate_authenticator_response, generate_nt_response};

/// Delivers frames both ways (20 ms one-way) and fires timers until the login is
/// decided and the link is quiet. `silent`: the server never answers.
fn drive(
    client: &mut LoginClient,
    server: &mut LoginServer,
    t0: Instant,
    silent: bool,
) -> Duration {
    let latency = Duration::from_millis(20);
    let mut now = t0;
    let mut flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    loop {
        while let Some(f) = client.poll_transmit() {
            if !silent {
                flight.push((now + latency, true, f));
            }
        }
        while let Some(f) = server.poll_transmit() {
            if !silent {
                flight.push((now + latency, false, f));
            }
        }
        let decided = client.outcome().is_some();
        if decided
            && (client.is_done() || client.outcome().is_some_and(LoginOutcome::is_success))
            && flight.is_empty()
        {
            return now - t0;
        }
        let next = [
            flight.iter().map(|(t, ..)| *t).min(),
            client.poll_timeout(),
            if silent { None } else { server.poll_timeout() },
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return now - t0 };
        assert!(
            now - t0 < Duration::from_secs(120),
            "a login ends well within two minutes"
        );
        now = next.max(now);
        let (due, rest): (Vec<_>, Vec<_>) = flight.into_iter().partition(|(t, ..)| *t <= now);
        flight = rest;
        for (_, to_server, f) in due {
            if to_server {
                server.handle_input(&f, now);
            } else {
                client.handle_input(&f, now);
            }
        }
        client.handle_timeout(now);
        if !silent {
            server.handle_timeout(now);
        }
    }
}

fn login(
    table: &Arc<HashMap<String, Secret>>,
    user: &str,
    password: &str,
    silent: bool,
) -> (LoginOutcome, Duration) {
    let t0 = Instant::now();
    let mut server = LoginServer::new(ServerConfig::new(table.clone()), t0);
    let mut client = LoginClient::new(LoginConfig::new(user, Secret::new(password)), t0);
    let took = drive(&mut client, &mut server, t0, silent);
    let outcome = client
        .outcome()
        .cloned()
        .unwrap_or(LoginOutcome::AuthTimeout);
    (outcome, took)
}

fn main() {
    let table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
    let cases = [
        ("right password", "alice", "s3cret", false),
        ("wrong password", "alice", "guess", false),
        ("unknown user", "mallory", "s3cret", false),
        ("silent server", "alice", "s3cret", true),
    ];
    for (label, user, pw, silent) in cases {
        let (outcome, took) = login(&table, user, pw, silent);
        let shown = match &outcome {
            LoginOutcome::Success { message, .. } => {
                format!("success (authenticator verified), server says {message:?}")
            }
            other => format!("{:?}", other.to_failure()),
        };
        println!(
            "{label:<15} after {:>6.2} s of protocol time: {shown}",
            took.as_secs_f64()
        );
    }

    // Throughput of the sans-IO login itself (CPU only), as a ratio to the bare
    // MS-CHAPv2 computations both sides must do anyway.
    let n = 200;
    let start = Instant::now();
    for i in 0..n {
        let (outcome, _) = login(
            &table,
            "alice",
            if i % 10 == 0 { "bad" } else { "s3cret" },
            false,
        );
        assert!(
            outcome.is_success() == (i % 10 != 0),
            "unexpected outcome {outcome:?}"
        );
    }
    let full = start.elapsed();
    let start = Instant::now();
    for i in 0..n {
        let c = [i as u8; 16];
        let nt = generate_nt_response(&c, &c, "alice", "s3cret");
        // client computes it, server recomputes it, server and client derive S=.
        let nt2 = generate_nt_response(&c, &c, "alice", "s3cret");
        let s1 = generate_authenticator_response("s3cret", &nt, &c, &c, "alice");
        let s2 = generate_authenticator_response("s3cret", &nt2, &c, &c, "alice");
        assert_eq!(s1, s2);
    }
    let crypto = start.elapsed();
    println!(
        "{n} in-memory logins (90% good): {:.0} logins/s on one core; bare MS-CHAPv2 crypto: {:.0}/s; full login costs {:.2}x the crypto",
        f64::from(n) / full.as_secs_f64(),
        f64::from(n) / crypto.as_secs_f64(),
        full.as_secs_f64() / crypto.as_secs_f64()
    );

    // Memory held by logins in progress: 5,000 client/server pairs parked in
    // the middle of the MS-CHAPv2 exchange, measured as resident-set growth.
    let pairs = 5_000;
    let before = rss_bytes();
    let t0 = Instant::now();
    let mut parked = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let mut server = LoginServer::new(ServerConfig::new(table.clone()), t0);
        let mut client = LoginClient::new(LoginConfig::new("alice", Secret::new("s3cret")), t0);
        for _ in 0..2 {
            while let Some(f) = client.poll_transmit() {
                server.handle_input(&f, t0);
            }
            while let Some(f) = server.poll_transmit() {
                client.handle_input(&f, t0);
            }
        }
        // LCP is up and the client's Response is queued: mid MS-CHAPv2.
        assert_eq!(client.phase(), LoginPhase::Authenticate);
        parked.push((client, server));
    }
    let after = rss_bytes();
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "memory per login in progress: {:.1} KiB for a client+server pair (RSS growth over {pairs} pairs; struct sizes {} + {} bytes)",
            a.saturating_sub(b) as f64 / pairs as f64 / 1024.0,
            std::mem::size_of::<LoginClient>(),
            std::mem::size_of::<LoginServer>(),
        );
    }
    drop(parked);
}

/// Resident set size from /proc (Linux); None elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
