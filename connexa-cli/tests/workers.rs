//! Several `connexa run` workers (real processes) on one PostgreSQL job
//! queue: a worker SIGKILLed mid-job has its items reclaimed by the live
//! ones, a worker paused past its lease has its late results refused, and
//! every item ends exactly once (one applied event, one history row, per
//! node). Needs `CONNEXA_TEST_PG_URL` and `psql` (tests/run.sh provides both).

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
        let dir = tempfile::tempdir().unwrap();
        // Short leases so that the test sees a reclaim quickly.
        std::fs::write(
            dir.path().join("config.toml"),
            "[workers]\nheartbeat_secs = 0.5\nlease_secs = 2.0\n",
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
        let stderr = self.dir.path().join(format!("{name}.log"));
        let child = self
            .cmd(&["run", "--worker", name, "--jobs"])
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
    // 2,000 nodes answering after 300 ms, 40 at once per worker: a few seconds' work.
    let (_sim, job, nodes) = env.fleet_and_job(2_000, "slow:300=1", 61, 40);
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
