//! The real thing over real sockets: starts the `connexa-http` binary on an
//! ephemeral loopback port, creates a token with `connexa-http token create`,
//! imports a simulated PPTP fleet over HTTP, starts a light job, reads the SSE
//! stream to the final 100 % event, checks the probe histograms on `/metrics`
//! and the results in the database, and stops the server with SIGTERM; a
//! background import stopped by SIGTERM resumes at the next start.

use std::process::Stdio;
use std::time::Duration;

use connexa_core::domain::{NodeFilter, Status};
use connexa_core::ops;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::store::SqlStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_connexa-http");

/// One HTTP/1.1 request with `Connection: close`; returns status, headers, body
/// (chunked transfer decoded).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    if let Some((_, b)) = body {
        s.write_all(b).await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut raw))
        .await
        .expect("response within 120 s")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let status: u16 = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[eol + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_imports_a_sim_fleet_runs_a_job_and_streams_it_to_100_percent() {
    let fleet = Fleet::start(
        FleetSpec::new(40)
            .first_ip([127, 41, 0, 1].into())
            .port(21841)
            .mix(vec![(Behaviour::Healthy, 3), (Behaviour::Refused, 1)]),
    )
    .await
    .unwrap();
    let healthy = fleet
        .nodes()
        .iter()
        .filter(|n| n.behaviour == Behaviour::Healthy)
        .count();
    // CSV carries the port (the plain list assumes 1723).
    let mut list = Vec::new();
    fleet
        .write_list(connexa_core::export::ExportFormat::Csv, &mut list)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let cfg = dir.path().join("connexa.toml");
    std::fs::write(
        &cfg,
        "[test]\nconcurrency = 32\nconnect_timeout_secs = 2\nlight_timeout_secs = 3\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();

    // A token, printed once on stdout.
    let out = Command::new(BIN)
        .args(["--db", &db, "--config"])
        .arg(&cfg)
        .args(["token", "create", "--name", "ci", "--role", "admin"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(connexa_http::auth::well_formed(&token), "{token}");

    let mut child = Command::new(BIN)
        .args(["--db", &db, "--config"])
        .arg(&cfg)
        .arg("serve")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("listening on http://") {
                return a.to_owned();
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .unwrap();
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let (s, _, _) = http(&addr, "GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
    let (s, _, _) = http(&addr, "GET", "/api/v1/stats", None, None).await;
    assert_eq!(s, 401);

    let (s, _, body) = http(
        &addr,
        "POST",
        "/api/v1/import",
        Some(&token),
        Some(("text/csv", &list)),
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["summary"]["added"].as_array().unwrap().len(), 40);

    let job = br#"{"kind": "light", "all": true}"#;
    let (s, _, body) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        Some(("application/json", job)),
    )
    .await;
    assert_eq!(s, 202, "{}", String::from_utf8_lossy(&body));
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();

    let (s, head, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{id}/events"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    let mut results = 0;
    let mut last = (String::new(), serde_json::Value::Null);
    for block in text.split("\n\n").filter(|b| b.contains("data: ")) {
        let ev = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("")
            .to_owned();
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        if ev == "result" {
            results += 1;
        }
        last = (ev, data);
    }
    assert_eq!(results, 40, "one result per node");
    assert_eq!(last.0, "done");
    assert_eq!(last.1["percent"], 100.0);
    assert_eq!(
        (last.1["ok"].as_u64(), last.1["failed"].as_u64()),
        (Some(healthy as u64), Some(40 - healthy as u64))
    );

    // Every probe the engine ran is on /metrics (the binary instruments its ports).
    let (s, _, body) = http(&addr, "GET", "/metrics", Some(&token), None).await;
    assert_eq!(s, 200);
    let metrics = String::from_utf8(body).unwrap();
    for (result, n) in [("ok", healthy), ("failed", 40 - healthy), ("error", 0)] {
        let line = format!(
            "connexa_probe_duration_seconds_count{{depth=\"light\",result=\"{result}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    let line = format!("connexa_probe_handshake_seconds_count{{depth=\"light\"}} {healthy}\n");
    assert!(metrics.contains(&line), "{line}{metrics}");

    // SIGTERM: a graceful exit.
    let pid = child.id().unwrap() as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    // The results are in the database.
    let store = SqlStore::connect(&db).await.unwrap();
    let nodes = ops::all_matching(&store, &NodeFilter::all()).await.unwrap();
    for (n, sim) in nodes.iter().zip(fleet.nodes()) {
        assert_eq!((n.ip, n.port), (std::net::IpAddr::V4(sim.ip), sim.port));
        let want = if sim.behaviour == Behaviour::Healthy {
            Status::PingLight
        } else {
            Status::PingFailed
        };
        assert_eq!(n.status, want, "{}", n.ip);
    }
    fleet.shutdown();
}

/// Starts `connexa-http serve` on an ephemeral port with `RUST_LOG` as given
/// (`None`: unset), opens a connection that sends nothing, waits until the
/// server closes it (`--header-timeout 1`), stops the server with SIGTERM and
/// returns its stderr.
async fn serve_log(rust_log: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--db",
        &db,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1",
    ])
    .env_remove("RUST_LOG")
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .kill_on_drop(true);
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            log.push_str(&l);
            log.push('\n');
            if let Some(a) = l.strip_prefix("listening on http://") {
                return a.to_owned();
            }
        }
        panic!("no listening line: {log}");
    })
    .await
    .expect("listening within 60 s");
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("closed by the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            log.push_str(&l);
            log.push('\n');
        }
    })
    .await
    .expect("stderr ends");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_sets_the_log_level() {
    // Unset: INFO (the shutdown line), no DEBUG (the closed connection).
    let log = serve_log(None).await;
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("header or idle timeout"), "{log}");
    // RUST_LOG=connexa_http=debug: the closed connection is logged.
    let log = serve_log(Some("info,connexa_http=debug")).await;
    assert!(
        log.contains("closing a connection: header or idle timeout"),
        "{log}"
    );
    // RUST_LOG=warn: no INFO lines.
    let log = serve_log(Some("warn")).await;
    assert!(!log.contains("shutting down"), "{log}");
}

/// `token create` gives least privilege unless told (`viewer`), takes
/// `--role` and `--metrics`, refuses an unknown role, and `token list`
/// shows each token's role and scope; the roles are the ones the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_takes_a_role_and_a_scope_and_list_shows_them() {
    use connexa_core::ports::{Role, TokenScope, TokenStore};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let run = |args: &'static [&'static str]| {
        let db = db.clone();
        async move {
            Command::new(BIN)
                .args(["--db", &db, "token"])
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    for args in [
        &["create", "--name", "dash"][..],
        &["create", "--name", "ops", "--role", "operator"],
        &["create", "--name", "prom", "--metrics"],
    ] {
        let out = run(args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        assert!(connexa_http::auth::well_formed(token.trim()), "{token}");
    }
    let bad = run(&["create", "--name", "x", "--role", "root"]).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown role"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let list = String::from_utf8(run(&["list"]).await.stdout).unwrap();
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split('\t').take(4).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["1", "dash", "viewer", "full"],
            ["2", "ops", "operator", "full"],
            ["3", "prom", "viewer", "metrics"],
        ],
        "{list}"
    );
    let store = SqlStore::connect(&db).await.unwrap();
    let got: Vec<(Role, TokenScope)> = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.role, t.scope))
        .collect();
    assert_eq!(
        got,
        [
            (Role::Viewer, TokenScope::Full),
            (Role::Operator, TokenScope::Full),
            (Role::Viewer, TokenScope::Metrics),
        ]
    );
    // Each creation is one audit row under the OS user; no token in them.
    let audit = store.audit_log(100).await.unwrap();
    assert_eq!(audit.len(), 3, "{audit:?}");
    for row in &audit {
        assert_eq!(row.action, "token_create");
        assert!(row.actor.starts_with("os:"), "{row:?}");
        assert!(
            !row.target.as_deref().unwrap_or("").contains("cxa_"),
            "{row:?}"
        );
    }
}

/// Starts `connexa-http serve` over `db`; returns the child and its address.
async fn start_server(db: &str, spool: &std::path::Path) -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--db",
            db,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool-dir",
        ])
        .arg(spool)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("listening on http://") {
                return a.to_owned();
            }
        }
        panic!("no listening line");
    })
    .await
    .expect("listening within 60 s");
    // Keep reading stderr so that the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn sigterm(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

async fn get_json(addr: &str, path: &str, token: &str) -> serde_json::Value {
    let (status, _, body) = http(addr, "GET", path, Some(token), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Posts a background import of `rows` rows; waits until it committed a
/// batch, stops the server with SIGTERM; returns the import's url.
async fn import_then_stop(
    db: &str,
    spool: &std::path::Path,
    token: &str,
    first: usize,
    rows: usize,
) -> String {
    let (child, addr) = start_server(db, spool).await;
    let list: String = (first..first + rows)
        .map(|i| {
            let (a, b, c) = (18 + (i >> 16), (i >> 8) & 255, i & 255);
            format!("198.{a}.{b}.{c}:u{i}:p{i}\n")
        })
        .collect();
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/v1/import?background=true&source=big.txt",
        Some(token),
        Some(("text/plain", list.as_bytes())),
    )
    .await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let url = v["url"].as_str().unwrap().to_owned();
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(&addr, &url, token).await;
        assert_eq!(
            v["state"], "running",
            "the import ended before the stop: {v}"
        );
        if v["bytes_processed"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(std::time::Instant::now() < give_up, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm(child).await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_import_survives_a_restart_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let out = Command::new(BIN)
        .args([
            "--db", &db, "token", "create", "--name", "ci", "--role", "admin",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let rows = 150_000;

    // Stopped during the import: the spool file stays, the job waits.
    let url = import_then_stop(&db, &spool, &token, 0, rows).await;
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1);
    let store = SqlStore::connect(&db).await.unwrap();
    let before = ops::count(&store, &NodeFilter::all()).await.unwrap();
    assert!(before > 0 && before < rows as u64, "{before}");

    // The next start resumes it from its checkpoint: every row once.
    let (child, addr) = start_server(&db, &spool).await;
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let done = loop {
        let v = get_json(&addr, &url, &token).await;
        if v["state"] != "running" {
            break v;
        }
        assert!(std::time::Instant::now() < give_up, "never resumed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["summary"]["added"].as_array().unwrap().len(), rows);
    assert_eq!(done["summary"]["duplicates"], serde_json::json!([]));
    assert_eq!(
        ops::count(&store, &NodeFilter::all()).await.unwrap(),
        rows as u64
    );
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    let id = done["import_job"].as_i64().unwrap();
    let jobs = get_json(&addr, "/api/v1/jobs", &token).await;
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id && j["kind"] == "import" && j["state"] == "done"),
        "{jobs}"
    );
    sigterm(child).await;

    // Stopped again during another import, whose spool file is then lost:
    // the next start ends it failed, saying why, with what went in.
    let url = import_then_stop(&db, &spool, &token, 1 << 18, rows).await;
    for f in std::fs::read_dir(&spool).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let (child, addr) = start_server(&db, &spool).await;
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let v = get_json(&addr, &url, &token).await;
        if v["state"] != "running" {
            break v;
        }
        assert!(std::time::Instant::now() < give_up, "never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    let why = failed["error"].as_str().unwrap();
    assert!(why.contains("cannot be read"), "{why}");
    let added = failed["summary"]["added"].as_array().unwrap().len() as u64;
    assert!(added > 0 && added < rows as u64, "{added}");
    assert_eq!(
        ops::count(&store, &NodeFilter::all()).await.unwrap(),
        rows as u64 + added
    );
    sigterm(child).await;
}
