//! The console's node forms and job controls in a real headless Chromium:
//! adding a node by hand (refused for what an import refuses, with its
//! message), editing its location in the detail drawer, the location
//! autocomplete, and "Cancel all" on running jobs.
//!
//! Every test name contains `browser` (tests/run.sh skips them where no
//! browser can be provisioned).

#[path = "browser/harness.rs"]
#[allow(dead_code)] // this binary uses a subset of the harness
mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use connexa_core::export::ExportFormat;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use harness::{Browser, Server, screenshot_dir};
use serde_json::json;

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
        "return !document.querySelector('#console').hidden && document.querySelectorAll('#cards .card').length === 9",
    )
    .await;
}

/// Sets a form field's value as typed text would (also characters a keyboard
/// cannot type, such as a control character).
async fn set_value(b: &Browser, css: &str, value: &str) {
    b.js(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
         el.dispatchEvent(new Event('input', {bubbles: true}));",
        vec![json!(css), json!(value)],
    )
    .await;
}

/// Opens the add-node dialog, fills it, submits; returns the inline error
/// (empty when the node was added and the dialog closed).
async fn add_node(b: &Browser, fields: &[(&str, &str)]) -> String {
    if !b
        .js("return document.querySelector('#add-node').open", vec![])
        .await
        .as_bool()
        .unwrap_or(false)
    {
        b.click("#add-node-open").await;
        b.wait_js(
            "the add-node dialog",
            T,
            "return document.querySelector('#add-node').open",
        )
        .await;
    }
    for (name, value) in fields {
        set_value(b, &format!("#add-node-form [name={name}]"), value).await;
    }
    b.js(
        "document.querySelector('#add-node-error').textContent = ''",
        vec![],
    )
    .await;
    b.click("#add-node-submit").await;
    let v = b
        .wait_js(
            "the node added or refused",
            T,
            "const e = document.querySelector('#add-node-error').textContent; \
             return e ? {error: e} : (!document.querySelector('#add-node').open && {error: ''})",
        )
        .await;
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_add_a_node_by_hand_then_edit_its_location() {
    let server = Server::start();
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    assert_eq!(b.text("#count").await, "0 nodes match");

    // A bad IP: refused inline, with the import's message, nothing stored.
    let err = add_node(
        &b,
        &[
            ("ip", "10.0.0.300"),
            ("login", "admin"),
            ("password", "s3cret"),
        ],
    )
    .await;
    assert_eq!(err, r#"invalid IP address "10.0.0.300""#);
    b.screenshot(&screenshot_dir(), "console-add-node-refused")
        .await;
    assert!(
        b.js("return document.querySelector('#add-node').open", vec![])
            .await
            .as_bool()
            .unwrap(),
        "the dialog stays open to fix the value"
    );
    assert_eq!(server.get("/nodes").await["total"], 0);
    // Fixed: added, codes expanded as an import expands them.
    let err = add_node(
        &b,
        &[
            ("ip", "127.0.0.77"),
            ("country", "US"),
            ("state", "TX"),
            ("comment", "from Bob"),
        ],
    )
    .await;
    assert_eq!(err, "");
    b.wait_js(
        "the new row",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 1",
    )
    .await;
    let nodes = server.get("/nodes").await;
    let n = &nodes["items"][0];
    assert_eq!(
        (
            &n["ip"],
            &n["login"],
            &n["country"],
            &n["state"],
            &n["comment"]
        ),
        (
            &json!("127.0.0.77"),
            &json!("admin"),
            &json!("United States"),
            &json!("Texas"),
            &json!("from Bob")
        )
    );
    assert_eq!(
        server.get("/nodes/1?reveal=true").await["password"],
        "s3cret"
    );
    // The same node again: the duplicate is named.
    let err = add_node(
        &b,
        &[
            ("ip", "127.0.0.77"),
            ("login", "admin"),
            ("password", "s3cret"),
        ],
    )
    .await;
    assert!(err.starts_with("duplicate of stored node 1"), "{err}");
    b.click("#add-node-close").await;

    // Edit the location in the node's detail drawer.
    b.click("#rows tr[data-id='1'] button[aria-label='History of node 1']")
        .await;
    b.wait_js(
        "the detail drawer with the edit form filled",
        T,
        "return document.querySelector('#history').open && \
           document.querySelector('#node-edit [name=state]').value === 'Texas'",
    )
    .await;
    set_value(&b, "#node-edit [name=city]", "Austin").await;
    set_value(&b, "#node-edit [name=comment]", "").await;
    b.click("#node-edit-save").await;
    b.wait_js(
        "the drawer to show the new location",
        T,
        "return [...document.querySelectorAll('#history-node dd')].some(d => d.textContent === 'Austin, Texas, United States')",
    )
    .await;
    let n = server.get("/nodes/1").await;
    assert_eq!(
        (&n["city"], &n["comment"]),
        (&json!("Austin"), &json!(null))
    );
    // Refused as an import refuses it: the server's message inline; nothing changed.
    set_value(&b, "#node-edit [name=comment]", "a\u{7}b").await;
    b.click("#node-edit-save").await;
    let err = b
        .wait_js(
            "the edit refusal",
            T,
            "return document.querySelector('#node-edit-error').textContent",
        )
        .await;
    assert_eq!(err, json!("comment contains a control character"));
    b.screenshot(&screenshot_dir(), "console-node-edit").await;
    assert_eq!(server.get("/nodes/1").await["comment"], json!(null));
    b.click("#history-close").await;

    // The filters' autocomplete offers the values the store holds.
    b.click("#filters [name=country]").await;
    let offered = b
        .wait_js(
            "the country suggestions",
            T,
            "const o = [...document.querySelectorAll('#values-country option')]; \
             return o.length && o.map(x => x.value)",
        )
        .await;
    assert_eq!(offered, json!(["United States"]));
    b.type_into("#filters [name=city]", "zz").await;
    b.wait_js(
        "no city starting with zz",
        T,
        "const l = document.querySelector('#values-city'); return l.dataset.loaded === 'city' && l.children.length === 0",
    )
    .await;
    b.close().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cancel_all_stops_two_running_jobs() {
    // Silent nodes hold a light test for its handshake timeout each; with one
    // node at a time, each job runs for tens of seconds.
    let fleet = Fleet::start(
        FleetSpec::new(12)
            .first_ip(Ipv4Addr::new(127, 97, 0, 1))
            .port(harness::free_port())
            .mix(vec![(Behaviour::Silent, 12)]),
    )
    .await
    .expect("start the simulator fleet");
    let mut list = Vec::new();
    fleet
        .write_list(ExportFormat::Pptp, &mut list)
        .expect("node list");
    let list = String::from_utf8(list).expect("utf-8");
    let server = Server::start();
    // Added through the API's "add node" (`[ip]:port:login:password` lines).
    for line in list.lines() {
        let (addr, rest) = line.split_once("]:").expect("[ip]:port:login:password");
        let (port, creds) = rest.split_once(':').expect("port");
        let (login, password) = creds.split_once(':').expect("login:password");
        let (status, v) = server
            .api_json(
                "POST",
                "/nodes",
                Some(
                    json!({"ip": addr.trim_start_matches('['), "port": port.parse::<u64>().unwrap(),
                            "login": login, "password": password}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let mut jobs = Vec::new();
    for ids in [(1..=6).collect::<Vec<i64>>(), (7..=12).collect()] {
        let (status, v) = server
            .api_json(
                "POST",
                "/jobs",
                Some(json!({"kind": "light", "ids": ids, "concurrency": 1, "node_timeout_secs": 120})),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        jobs.push(v["id"].as_i64().unwrap());
    }
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    // The console attaches to both running jobs.
    b.wait_js(
        "both jobs in the panel",
        T,
        "return document.querySelectorAll('#job-list [data-job]').length === 2 && \
           !document.querySelector('#jobs').hidden",
    )
    .await;
    for id in &jobs {
        let j = server.get(&format!("/jobs/{id}")).await;
        assert!(
            j["state"] == "running" || j["state"] == "queued",
            "job {id} ended before the cancellation: {j}"
        );
    }
    b.click("#cancel-all").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    assert!(
        b.text("#confirm-title")
            .await
            .contains("Cancel every running job")
    );
    b.screenshot(&screenshot_dir(), "console-cancel-all").await;
    b.click("#confirm-ok").await;
    for id in &jobs {
        let done = b
            .wait_js(
                &format!("job {id} to end cancelled in the panel"),
                T,
                &format!(
                    "const el = document.querySelector('#job-list [data-job=\"{id}\"]'); \
                     return el && el.dataset.finished === 'true' && \
                       {{state: el.dataset.state, done: el.dataset.done, total: el.dataset.total}}"
                ),
            )
            .await;
        assert_eq!(done["state"], json!("cancelled"), "{done}");
        assert_eq!(done["done"], done["total"], "every item ended: {done}");
        let j = server.get(&format!("/jobs/{id}")).await;
        assert_eq!(j["state"], "cancelled", "{j}");
        assert_eq!(j["progress"]["pending"], 0, "{j}");
        assert_eq!(j["progress"]["running"], 0, "{j}");
    }
    // A job that failed nodes offers the retest; none of these did (cancelled only).
    let offered = b
        .js(
            "return [...document.querySelectorAll('#job-list .job-retest')].filter(x => !x.hidden).length",
            vec![],
        )
        .await;
    assert_eq!(offered, json!(0));
    b.close().await;
    drop(server);
    drop(fleet);
}

/// The test settings go with the job (a budget below the kind's minimum is
/// refused by the server with its message), and a finished job with failed
/// nodes offers "Retest failed with a longer timeout", which starts a job of
/// the same kind on exactly those nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_test_settings_and_retest_the_failed_nodes() {
    let fleet = Fleet::start(
        FleetSpec::new(3)
            .first_ip(Ipv4Addr::new(127, 98, 0, 1))
            .port(harness::free_port())
            .mix(vec![(Behaviour::Healthy, 1), (Behaviour::Refused, 2)]),
    )
    .await
    .expect("start the simulator fleet");
    let mut list = Vec::new();
    fleet
        .write_list(ExportFormat::Pptp, &mut list)
        .expect("node list");
    let server = Server::start();
    for line in String::from_utf8(list).expect("utf-8").lines() {
        let (addr, rest) = line.split_once("]:").expect("[ip]:port:login:password");
        let (port, creds) = rest.split_once(':').expect("port");
        let (login, password) = creds.split_once(':').expect("login:password");
        let (status, v) = server
            .api_json(
                "POST",
                "/nodes",
                Some(
                    json!({"ip": addr.trim_start_matches('['), "port": port.parse::<u64>().unwrap(),
                            "login": login, "password": password}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.wait_js(
        "the 3 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 3",
    )
    .await;
    b.click("#select-page").await;
    // Out of the API's bounds: refused on the page, no job.
    b.type_into("#test-concurrency", "0").await;
    b.click("[data-action=light]").await;
    let toast = b
        .wait_js(
            "the concurrency refusal",
            T,
            "const t = document.querySelector('#toast'); return t.classList.contains('bad') && t.textContent",
        )
        .await;
    assert_eq!(
        toast,
        json!("Concurrency: a whole number from 1 to 100000.")
    );
    // Below the light test's minimum budget: the server's own words.
    b.type_into("#test-concurrency", "2").await;
    b.type_into("#test-timeout", "2").await;
    b.click("[data-action=light]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await;
    let toast = b
        .wait_js(
            "the budget refusal",
            T,
            "const t = document.querySelector('#toast').textContent; return t.includes('too short') && t",
        )
        .await;
    assert!(
        toast.as_str().unwrap().contains("give at least 10 s"),
        "{toast}"
    );
    assert_eq!(server.get("/jobs").await, json!([]), "no job was started");
    // Within bounds: the job runs; two nodes fail (refused).
    b.type_into("#test-timeout", "15").await;
    b.click("[data-action=light]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await;
    let first = b
        .wait_js(
            "the first job to end with its retest offered",
            T,
            "const el = document.querySelector('#job-list [data-job]'); \
             return el && el.dataset.finished === 'true' && !el.querySelector('.job-retest').hidden && Number(el.dataset.job)",
        )
        .await
        .as_i64()
        .expect("job id");
    let j = server.get(&format!("/jobs/{first}")).await;
    assert_eq!(
        (&j["progress"]["ok"], &j["progress"]["failed"]),
        (&json!(1), &json!(2)),
        "{j}"
    );
    b.click(&format!("#job-list [data-job='{first}'] .job-retest"))
        .await;
    let second = b
        .wait_js(
            "the retest job to end",
            T,
            &format!(
                "const el = [...document.querySelectorAll('#job-list [data-job]')].find(e => e.dataset.job !== '{first}'); \
                 return el && el.dataset.finished === 'true' && {{id: Number(el.dataset.job), total: el.dataset.total}}"
            ),
        )
        .await;
    assert_eq!(
        second["total"],
        json!("2"),
        "only the failed nodes: {second}"
    );
    let j = server
        .get(&format!("/jobs/{}", second["id"].as_i64().unwrap()))
        .await;
    assert_eq!(
        (&j["kind"], &j["progress"]["failed"]),
        (&json!("light"), &json!(2)),
        "{j}"
    );
    b.close().await;
    drop(server);
    drop(fleet);
}
