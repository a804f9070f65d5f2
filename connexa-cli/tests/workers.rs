//! Several `connexa run` workers (real processes) on one PostgreSQL job
//! queue: a worker SIGKILLed mid-job has its items reclaimed by the live
//! ones, a worker paused past its lease has its late results refused, and
//! every item ends exactly once (one applied event, one history row, per
//! node). Services wanted on a simulated fleet are placed across two
//! `connexa run --services` workers; one SIGKILLed or paused, its services
//! come back on the other with the same credentials, never on both. Needs
//! `CONNEXA_TEST_PG_URL`, `psql` and `curl` (tests/run.sh provides them), and
//! CAP_NET_RAW (root) for the simulator's tunnels.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{signal_and_wait, start_sim};

/// A fresh PostgreSQL database, dropped at the end.
struct Pg {
    admin: String,
    name: String,
    url: String,
}

impl Pg {
    fn new() -> Pg {
        let admin = std::env::var("CONNEXA_TEST_PG_URL").expect(
            "CONNEXA_TEST_PG_URL is not set: run tests/run.sh (it starts a throw-away PostgreSQL), or skip with --skip postgres",
        );
        let name = format!(
            "connexa_w_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                % 1_000_000_000
        );
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
        let url = format!("{base}/{name}");
        Pg { admin, name, url }
    }

    fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    fn num(&self, sql: &str) -> i64 {
        let out = self.query(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {out:?}: {e}"))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = StdCommand::new("psql")
            .args([
                &self.admin,
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = StdCommand::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql (postgresql-client) must be installed");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `connexa run` worker process, killed when dropped.
struct Worker {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A SIGSTOPped process must be continued to die of SIGKILL cleanly.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
    pg: Pg,
}

impl Env {
    fn new() -> Env {
        Env::with_config("")
    }

    /// Short leases (so that the test sees a reclaim quickly), then `extra`.
    fn with_config(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!("{extra}\n[workers]\nheartbeat_secs = 0.5\nlease_secs = 2.0\n"),
        )
        .unwrap();
        Env { dir, pg: Pg::new() }
    }

    fn cmd(&self, args: &[&str]) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"));
        c.current_dir(self.dir.path())
            .env_remove("CONNEXA_DB")
            .env("CONNEXA_CONFIG", self.dir.path().join("config.toml"))
            .args(["--db", &self.pg.url])
            .args(args);
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cmd(&all).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn worker(&self, name: &str) -> Worker {
        self.spawn(name, &["--jobs"])
    }

    /// A `connexa run --worker NAME` with `args`.
    fn spawn(&self, name: &str, args: &[&str]) -> Worker {
        let stderr = self.dir.path().join(format!("{name}.log"));
        let mut all = vec!["run", "--worker", name];
        all.extend_from_slice(args);
        let child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Worker { child, stderr }
    }

    /// Imports a simulated fleet of `nodes` and queues one light job on it.
    fn fleet_and_job(
        &self,
        nodes: u32,
        mix: &str,
        block: u8,
        concurrency: u32,
    ) -> (common::Sim, i64, i64) {
        let list = self.dir.path().join("fleet.txt");
        let (sim, _, _) = start_sim(
            &["-q"],
            &["--nodes", &nodes.to_string(), "--mix", mix],
            block,
            &list,
        );
        let out = self
            .cmd(&["-q", "import", list.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job = self.json(&[
            "test",
            "light",
            "--all",
            "--detach",
            "--concurrency",
            &concurrency.to_string(),
        ])["job"]
            .as_i64()
            .unwrap();
        (sim, job, i64::from(nodes))
    }

    fn count(&self, job: i64, condition: &str) -> i64 {
        self.pg.num(&format!(
            "SELECT count(*) FROM job_items WHERE job_id = {job} AND {condition}"
        ))
    }

    /// Waits (polling the database) until `f` holds; panics after `limit`.
    fn until(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        t0.elapsed()
    }

    /// Every item of `job` ended exactly once: one applied event, one
    /// history row per node.
    fn each_item_applied_once(&self, job: i64, nodes: i64) {
        assert_eq!(self.count(job, "state = 'ok'"), nodes);
        let rows = self.pg.num(&format!(
            "SELECT count(*) FROM status_history WHERE job_id = {job}"
        ));
        let distinct = self.pg.num(&format!(
            "SELECT count(DISTINCT node_id) FROM status_history WHERE job_id = {job}"
        ));
        assert_eq!((rows, distinct), (nodes, nodes), "one history row per node");
        assert_eq!(
            self.pg
                .num("SELECT count(*) FROM nodes WHERE status <> 'ping_light'"),
            0
        );
    }
}

fn log(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn workers(env: &Env) -> Vec<Value> {
    env.json(&["workers"]).as_array().unwrap().clone()
}

fn by_name<'a>(w: &'a [Value], name: &str) -> &'a Value {
    w.iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no worker {name}: {w:?}"))
}

#[test]
fn postgres_three_workers_one_sigkilled_mid_job_every_item_ends_once() {
    let env = Env::new();
    // 5,000 nodes answering after 300 ms, 100 at once per worker: a few seconds' work.
    let (_sim, job, nodes) = env.fleet_and_job(5_000, "slow:300=1", 61, 100);
    let mut w: Vec<Worker> = ["w1", "w2", "w3"].iter().map(|n| env.worker(n)).collect();
    // w3 is working and the job is under way: kill it (no clean exit).
    env.until(
        "w3 holds items and 10 % are done",
        Duration::from_secs(60),
        || {
            env.count(job, "state = 'running' AND worker = 'w3'") > 0
                && env.count(job, "state NOT IN ('pending', 'running')") >= nodes / 10
        },
    );
    w[2].child.kill().unwrap();
    w[2].child.wait().unwrap();
    let held = env.count(job, "state = 'running' AND worker = 'w3'");
    assert!(
        env.count(job, "state = 'pending'") > 0,
        "killed mid-job, not at the end"
    );
    // The live workers reclaim its items once its lease (2 s) ran out: no restart.
    let took = env.until("w3's items reclaimed", Duration::from_secs(30), || {
        env.count(job, "state = 'running' AND worker = 'w3'") == 0
    });
    // Lease 2 s + heartbeat 0.5 s + pick-up 1 s, with room for a loaded machine.
    assert!(
        took < Duration::from_secs(20),
        "{took:?} ({held} items held)"
    );
    env.until("the job is done", Duration::from_secs(120), || {
        env.pg
            .query(&format!("SELECT state FROM jobs WHERE id = {job}"))
            .trim()
            == "done"
    });
    assert_eq!(env.count(job, "state NOT IN ('ok')"), 0);
    env.each_item_applied_once(job, nodes);
    // Who did what: w3 dead, holding nothing; w1 and w2 alive, both worked.
    let list = workers(&env);
    assert_eq!(by_name(&list, "w3")["alive"], false);
    assert_eq!(by_name(&list, "w3")["items_in_flight"], 0);
    for name in ["w1", "w2"] {
        assert_eq!(by_name(&list, name)["alive"], true, "{list:?}");
        assert_eq!(by_name(&list, name)["roles"], serde_json::json!(["jobs"]));
        assert!(
            env.count(job, &format!("worker = '{name}'")) > 0,
            "{name} worked"
        );
    }
    // A clean exit deregisters.
    for worker in &mut w[..2] {
        let status = signal_and_wait(&mut worker.child, "-TERM");
        assert!(status.success(), "{}", log(&worker.stderr));
    }
    let names: Vec<Value> = workers(&env).iter().map(|w| w["name"].clone()).collect();
    assert_eq!(names, vec![Value::from("w3")]);
}

#[test]
fn postgres_a_worker_paused_past_its_lease_has_its_late_results_refused() {
    let env = Env::new();
    // 200 nodes answering after 1.5 s; w1 takes 50 at once.
    let (_sim, job, nodes) = env.fleet_and_job(200, "slow:1500=1", 62, 50);
    let mut w1 = env.worker("w1");
    env.until("w1 holds items", Duration::from_secs(60), || {
        env.count(job, "state = 'running' AND worker = 'w1'") > 0
    });
    let stop = |sig: &str, child: &Child| {
        let ok = StdCommand::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    stop("-STOP", &w1.child);
    let held: Vec<String> = env
        .pg
        .query(&format!(
            "SELECT id FROM job_items WHERE job_id = {job} AND state = 'running' AND worker = 'w1'"
        ))
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!held.is_empty());
    // w2 starts while w1 is still alive: its recovery leaves w1's items alone...
    let mut w2 = env.worker("w2");
    // ...until w1's lease runs out; then w2 takes them and ends the job.
    env.until("the job is done", Duration::from_secs(120), || {
        env.pg
            .query(&format!("SELECT state FROM jobs WHERE id = {job}"))
            .trim()
            == "done"
    });
    let ids = held.join(",");
    assert_eq!(
        env.pg.num(&format!(
            "SELECT count(*) FROM job_items WHERE id IN ({ids}) AND worker = 'w2' AND state = 'ok'"
        )),
        held.len() as i64,
        "w2 reclaimed and ended every item w1 held"
    );
    assert_eq!(by_name(&workers(&env), "w1")["alive"], false);
    // w1 wakes up: its tests of those items end and their results reach the
    // store late; SIGTERM makes it commit whatever it has in flight.
    stop("-CONT", &w1.child);
    let status = signal_and_wait(&mut w1.child, "-TERM");
    let err = log(&w1.stderr);
    assert!(status.success(), "{err}");
    let refused: u64 = err
        .lines()
        .find_map(|l| {
            l.split_once(" late results were refused")
                .and_then(|(n, _)| n.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no refusal reported: {err}"));
    assert!(
        refused >= 1 && refused <= held.len() as u64,
        "{refused} of {}",
        held.len()
    );
    // Nothing was applied twice.
    env.each_item_applied_once(job, nodes);
    let status = signal_and_wait(&mut w2.child, "-TERM");
    assert!(status.success(), "{}", log(&w2.stderr));
}

/// Speed tests a simulated tunnel passes quickly, and a fast reconciler.
const SERVICES_CONFIG: &str = "[test]\ntest_url = \"http://10.78.0.1/bytes?100000000\"\n\
    speed_duration_secs = 1.0\nspeed_warmup_secs = 0.2\nspeed_streams = 1\n\
    speed_threshold_mbps = 1.0\n\
    [services]\nport_min = 34300\nport_max = 34399\n\
    reconcile_interval_secs = 0.5\nmonitor_interval_secs = 0.5\n";

/// The TCP ports `pid` listens on: its socket inodes looked up in /proc/net/tcp.
fn listening_ports(pid: u32) -> std::collections::HashSet<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            if let Some(i) = target
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(i.to_owned());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            // sl local rem st ... inode (field 9); st 0A = LISTEN
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"0A") || !inodes.contains(*f.get(9)?) {
                return None;
            }
            u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// `service list` (JSON) once `ok` holds for it (at most 90 s). Every poll
/// also checks that no service's port is listened on by both workers.
fn services_when(env: &Env, pids: &[u32], what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let list = env.json(&["service", "list"]).as_array().unwrap().clone();
        let ports: Vec<std::collections::HashSet<u16>> =
            pids.iter().map(|p| listening_ports(*p)).collect();
        for s in &list {
            let port = u16::try_from(s["port"].as_u64().unwrap()).unwrap();
            let n = ports.iter().filter(|p| p.contains(&port)).count();
            assert!(
                n <= 1,
                "node {}: port {port} served by {n} workers",
                s["node"]
            );
        }
        if ok(&list) {
            return list;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{what}: not after 90 s: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A SOCKS5 connect through the service (curl), pulling `bytes` from the
/// simulated node's web server.
fn curl_through(s: &Value, bytes: u64) {
    let out = StdCommand::new("curl")
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
            s["username"].as_str().unwrap(),
            s["password"].as_str().unwrap(),
            s["host"].as_str().unwrap(),
            s["port"]
        ))
        .arg(format!("http://10.78.0.1/bytes?{bytes}"))
        .output()
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "node {}: {}",
        s["node"],
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), bytes.to_string());
}

fn public_host(worker: &str) -> &'static str {
    if worker == "w1" {
        "127.0.0.1"
    } else {
        "localhost"
    }
}

/// 20 simulated nodes verified (`test pipeline`), two services workers (w1,
/// w2), every service wanted: both hold some, each on its worker's public
/// host and port, served there only, and a SOCKS5 connect through each
/// works. Returns the services and the history mark after the pipeline.
fn twenty_services_on_two_workers(
    env: &Env,
    block: u8,
) -> (common::Sim, Worker, Worker, Vec<Value>, i64) {
    let list = env.dir.path().join("fleet.txt");
    let (sim, _, _) = start_sim(&["-q"], &["--nodes", "20", "--tunnels"], block, &list);
    let out = env
        .cmd(&["-q", "import", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .cmd(&["-q", "test", "pipeline", "--all", "--timeout", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.pg
            .num("SELECT count(*) FROM nodes WHERE status = 'speed_ok'"),
        20
    );
    let mark = env
        .pg
        .num("SELECT coalesce(max(id), 0) FROM status_history");
    let w1 = env.spawn("w1", &["--services", "--public-host", public_host("w1")]);
    let w2 = env.spawn("w2", &["--services", "--public-host", public_host("w2")]);
    env.until(
        "both services workers alive",
        Duration::from_secs(30),
        || {
            let list = workers(env);
            list.len() == 2 && list.iter().all(|w| w["alive"] == true)
        },
    );
    let v = env.json(&["service", "start", "--all"]);
    assert_eq!(v["changed"].as_array().unwrap().len(), 20, "{v}");
    let pids = [w1.child.id(), w2.child.id()];
    let services = services_when(env, &pids, "20 services up", |l| {
        l.len() == 20
            && l.iter().all(|s| {
                s["status"] == "online"
                    && s["worker"]
                        .as_str()
                        .is_some_and(|w| s["host"] == public_host(w))
            })
    });
    let on = |w: &str| services.iter().filter(|s| s["worker"] == w).count();
    assert!(on("w1") > 0 && on("w2") > 0, "both hold some: {services:?}");
    assert_eq!(on("w1") + on("w2"), 20);
    // The store's placement is what `service list` shows, and each
    // service's port is listened on by its worker only.
    let placed = env
        .pg
        .query("SELECT node_id || ':' || worker FROM service_placements ORDER BY node_id");
    let shown: Vec<String> = services
        .iter()
        .map(|s| format!("{}:{}", s["node"], s["worker"].as_str().unwrap()))
        .collect();
    assert_eq!(placed.lines().collect::<Vec<_>>(), shown);
    let (p1, p2) = (listening_ports(pids[0]), listening_ports(pids[1]));
    for s in &services {
        let port = u16::try_from(s["port"].as_u64().unwrap()).unwrap();
        let (mine, other) = if s["worker"] == "w1" {
            (&p1, &p2)
        } else {
            (&p2, &p1)
        };
        assert!(mine.contains(&port) && !other.contains(&port), "{s}");
        curl_through(s, 1000);
    }
    let held: Vec<(String, u64)> = workers(env)
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["services_held"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        vec![
            ("w1".to_owned(), on("w1") as u64),
            ("w2".to_owned(), on("w2") as u64)
        ]
    );
    (sim, w1, w2, services, mark)
}

/// Every service now on w2 with the credentials it had, a SOCKS5 connect
/// through each works, and no node was demoted along the way.
fn all_on_w2_with_the_same_credentials(env: &Env, before: &[Value], now: &[Value], mark: i64) {
    for (a, b) in before.iter().zip(now) {
        assert_eq!(a["node"], b["node"]);
        assert_eq!(b["worker"], "w2", "{b}");
        assert_eq!(b["host"], "localhost", "{b}");
        for k in ["username", "password"] {
            assert_eq!(a[k], b[k], "node {}: {k} kept", a["node"]);
        }
        curl_through(b, 1000);
    }
    assert_eq!(
        env.pg.num(&format!(
            "SELECT count(*) FROM status_history WHERE id > {mark} \
             AND to_status IS NOT NULL AND to_status NOT IN ('speed_ok', 'online', 'offline')"
        )),
        0,
        "no verified node demoted"
    );
    assert_eq!(
        env.pg.num(
            "SELECT count(*) FROM nodes WHERE status NOT IN ('speed_ok', 'online', 'offline')"
        ),
        0
    );
}

#[test]
fn postgres_services_placed_on_two_workers_move_to_the_live_one_when_one_is_killed() {
    let env = Env::with_config(SERVICES_CONFIG);
    let (_sim, mut w1, mut w2, before, mark) = twenty_services_on_two_workers(&env, 63);
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    let pids = [w2.child.id()];
    let after = services_when(&env, &pids, "w1's services back on w2", |l| {
        l.len() == 20
            && l.iter()
                .all(|s| s["worker"] == "w2" && s["host"] == "localhost" && s["status"] == "online")
    });
    let served = listening_ports(pids[0]);
    for s in &after {
        assert!(served.contains(&u16::try_from(s["port"].as_u64().unwrap()).unwrap()));
    }
    all_on_w2_with_the_same_credentials(&env, &before, &after, mark);
    let list = workers(&env);
    assert_eq!(by_name(&list, "w1")["alive"], false);
    assert_eq!(by_name(&list, "w1")["services_held"], 0);
    assert_eq!(by_name(&list, "w2")["services_held"], 20);
    // The human views name the worker and what it holds.
    let out = env.cmd(&["service", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("WORKER") && table.contains(" w2 "),
        "{table}"
    );
    let line = format!(
        "localhost:{}:{}:{}",
        after[0]["port"],
        after[0]["username"].as_str().unwrap(),
        after[0]["password"].as_str().unwrap()
    );
    assert!(table.contains(&line), "{table}");
    let out = env.cmd(&["workers"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SERVICES"), "{table}");
    let status = signal_and_wait(&mut w2.child, "-TERM");
    assert!(status.success(), "{}", log(&w2.stderr));
}

#[test]
fn postgres_a_services_worker_paused_past_its_lease_stops_its_copies_when_it_resumes() {
    let env = Env::with_config(SERVICES_CONFIG);
    let (_sim, mut w1, mut w2, before, mark) = twenty_services_on_two_workers(&env, 64);
    let sig = |s: &str, child: &Child| {
        let ok = StdCommand::new("kill")
            .args([s, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let w1_ports: std::collections::HashSet<u16> = before
        .iter()
        .filter(|s| s["worker"] == "w1")
        .map(|s| u16::try_from(s["port"].as_u64().unwrap()).unwrap())
        .collect();
    sig("-STOP", &w1.child);
    // Paused past its lease: w2 takes its services (w1's listeners still
    // exist but nobody answers on them; w2 takes other ports).
    let after = services_when(&env, &[w2.child.id()], "w1's services on w2", |l| {
        l.len() == 20
            && l.iter()
                .all(|s| s["worker"] == "w2" && s["host"] == "localhost" && s["status"] == "online")
    });
    // Resumed: its first reconciler pass stops its copies before anything
    // else (the placement says w2), and it never takes them back.
    sig("-CONT", &w1.child);
    env.until("w1 stopped its copies", Duration::from_secs(30), || {
        listening_ports(w1.child.id()).is_disjoint(&w1_ports)
    });
    let now = services_when(&env, &[w1.child.id(), w2.child.id()], "still on w2", |l| {
        l.len() == 20 && l.iter().all(|s| s["worker"] == "w2")
    });
    let key = |l: &[Value]| -> Vec<String> {
        l.iter()
            .map(|s| {
                format!(
                    "{} {} {}:{} {}",
                    s["node"], s["worker"], s["host"], s["port"], s["username"]
                )
            })
            .collect()
    };
    assert_eq!(key(&now), key(&after), "nothing moved back");
    assert!(
        log(&w1.stderr).contains("service placed on another worker: stopped here"),
        "{}",
        log(&w1.stderr)
    );
    all_on_w2_with_the_same_credentials(&env, &before, &now, mark);
    for w in [&mut w1, &mut w2] {
        let status = signal_and_wait(&mut w.child, "-TERM");
        assert!(status.success(), "{}", log(&w.stderr));
    }
}
