//! The console's services view in a real headless Chromium, against the real
//! `connexa-http` binary running a SOCKS5 service through a simulated node's
//! tunnel: the counters move while curl pulls bytes through the service, and
//! the Restart button restarts it on the same port.
//!
//! Every test name contains `browser` (tests/run.sh skips them where no
//! browser can be provisioned). The simulator serves logins and tunnels over
//! raw GRE sockets: needs CAP_NET_RAW (root), like the other tunnel tests.

#[path = "browser/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use connexa_core::sim::{Fleet, FleetSpec, TunnelSpec};
use harness::{Browser, Server, screenshot_dir};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Opens the console and signs in with the server's token.
async fn sign_in(b: &Browser, server: &Server) {
    b.goto(&format!("{}/", server.base)).await;
    b.wait_js(
        "the sign-in form",
        T,
        "return !!document.querySelector('#account-name:focus')",
    )
    .await;
    b.type_into("#token", &server.token).await;
    b.click("#signin-form button[type=submit]").await;
    b.wait_js(
        "the console after sign-in",
        T,
        "return !document.querySelector('#console').hidden",
    )
    .await;
}

/// Polls the API until `f` returns `Some` (at most `T`).
async fn until<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < T, "{what}: not within {T:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `curl --socks5-hostname` through the service to the host behind the
/// node's tunnel; returns how many bytes came.
fn curl_through(service: &Value, bytes: u64) -> u64 {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ])
        .arg("--socks5-hostname")
        .arg(format!(
            "{}:{}@{}:{}",
            service["username"].as_str().unwrap(),
            service["password"].as_str().unwrap(),
            service["host"].as_str().unwrap(),
            service["port"]
        ))
        .arg(format!("http://10.78.0.1/bytes?{bytes}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

/// The services row of node `id` as the page shows it, after clicking
/// "Refresh services" (each evaluation refreshes; the next one reads).
fn service_row_script(id: i64, condition: &str) -> String {
    format!(
        "document.querySelector('#services-refresh').click(); \
         const r = document.querySelector('#service-rows tr[data-node=\"{id}\"]'); \
         if (!r) return null; \
         const d = {{status: r.dataset.status, port: r.dataset.port, \
           bytesDown: Number(r.dataset.bytesDown || 0), bytesUp: Number(r.dataset.bytesUp || 0), \
           total: Number(r.dataset.connectionsTotal || 0), started: r.dataset.started, \
           button: r.querySelector('.service-restart').textContent, \
           text: r.textContent}}; \
         return ({condition}) ? d : null;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_service_counters_move_while_curl_pulls_bytes_and_restart_keeps_the_port() {
    let fleet = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 66, 0, 1))
            .port(harness::free_port())
            .tunnels(TunnelSpec::default()),
    )
    .await
    .expect("start the simulator fleet");
    assert!(
        fleet.serves_logins(),
        "the simulator cannot serve logins: {:?}",
        fleet.logins_unavailable()
    );
    let sim = fleet.nodes()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[test]\ntest_url = \"http://10.78.0.1/bytes?100000000\"\n\
         speed_duration_secs = 1.0\nspeed_warmup_secs = 0.2\nspeed_streams = 1\n\
         speed_threshold_mbps = 1.0\n\
         [services]\nport_min = 34400\nport_max = 34449\n\
         reconcile_interval_secs = 0.5\nmonitor_interval_secs = 0.5\n",
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);

    // A verified node (pipeline test through its tunnel) wanting a service.
    let (st, node) = server
        .api_json(
            "POST",
            "/nodes",
            Some(json!({"ip": sim.ip.to_string(), "port": sim.port,
                        "login": sim.login, "password": sim.password.expose()})),
        )
        .await;
    assert_eq!(st, 201, "{node}");
    let id = node["id"].as_i64().unwrap();
    let (st, job) = server
        .api_json(
            "POST",
            "/jobs",
            Some(json!({"kind": "pipeline", "ids": [id]})),
        )
        .await;
    assert_eq!(st, 202, "{job}");
    let jid = job["id"].as_i64().unwrap();
    until("the pipeline test", || async {
        let v = server.get(&format!("/jobs/{jid}")).await;
        (v["state"] == "done").then_some(v)
    })
    .await;
    let v = server.get(&format!("/nodes/{id}")).await;
    assert_eq!(v["status"], "speed_ok", "{v}");
    let (st, v) = server
        .api_json("POST", "/services/start", Some(json!({"ids": [id]})))
        .await;
    assert_eq!(st, 202, "{v}");
    let service = until("the service to run", || async {
        let v = server.get("/services?reveal=true").await;
        (v["items"][0]["status"] == "online").then(|| v["items"][0]["service"].clone())
    })
    .await;
    let port = service["port"].as_u64().unwrap();
    assert!((34400..=34449).contains(&port), "{service}");

    let b = Browser::start().await;
    sign_in(&b, &server).await;
    let first = b
        .wait_js(
            "the service row with its counters",
            T,
            &service_row_script(id, "d.status === 'online' && d.started"),
        )
        .await;
    assert_eq!(first["port"], port.to_string(), "{first}");
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{first}"
    );
    assert!(first["bytesDown"].as_u64().unwrap() < 300_000, "{first}");

    // Bytes pulled through the service move its counters on the page.
    assert_eq!(curl_through(&service, 300_000), 300_000);
    let moved = b
        .wait_js(
            "the counters to move",
            T,
            &service_row_script(id, "d.bytesDown >= 300000 && d.total >= 1 && d.bytesUp > 0"),
        )
        .await;
    assert!(moved["text"].as_str().unwrap().contains("KiB"), "{moved}");
    b.js(
        "document.querySelector('#services').scrollIntoView()",
        vec![],
    )
    .await;
    b.screenshot(&screenshot_dir(), "console-services").await;

    // Restart: confirm, then the row comes back online on the same port with
    // a new start time and counters from zero.
    b.click(&format!(
        "#service-rows tr[data-node=\"{id}\"] .service-restart"
    ))
    .await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await;
    let started = moved["started"].as_str().unwrap().to_owned();
    let again = b
        .wait_js(
            "the restarted service",
            T,
            &service_row_script(
                id,
                &format!(
                    "d.status === 'online' && d.started && d.started !== '{started}' && d.button === 'Restart'"
                ),
            ),
        )
        .await;
    assert_eq!(again["port"], port.to_string(), "same port: {again}");
    assert!(again["bytesDown"].as_u64().unwrap() < 300_000, "{again}");
    let toast = b.text("#toast").await;
    assert!(toast.contains("restarted") || toast.is_empty(), "{toast}");
    let v = server.get("/services?reveal=true").await;
    let after = &v["items"][0]["service"];
    for k in ["host", "port", "username", "password"] {
        assert_eq!(after[k], service[k], "{k} kept across the restart");
    }
    assert_eq!(curl_through(after, 50_000), 50_000);
    let history = server
        .get(&format!("/nodes/{id}/history"))
        .await
        .to_string();
    assert!(
        !history.contains("service_stopped"),
        "a restart is no stop: {history}"
    );
    let csp = b
        .js(
            "return document.documentElement.dataset.cspViolations || '0'",
            vec![],
        )
        .await;
    assert_eq!(csp, "0");
    b.close().await;
    drop(server);
    fleet.shutdown();
}
