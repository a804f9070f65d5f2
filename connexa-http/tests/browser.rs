//! The web console in a real headless Chromium (Debian's `chromium` +
//! `chromium-driver`, installed by tests/run.sh), driven over WebDriver.
//!
//! Every test name contains `browser`: tests/run.sh skips them (`--skip browser`)
//! where no browser can be provisioned, and fails in CI. Screenshots go to
//! `$CONNEXA_SCREENSHOTS` (`CONNEXA_SCREENSHOTS=docs` refreshes the committed
//! ones) or a temporary directory.

#[path = "browser/harness.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use connexa_core::export::ExportFormat;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use harness::{Browser, Server, screenshot_dir, serve};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// The page alone (no API behind it): it loads its modules under the strict CSP,
/// the CSP really blocks an injected inline script, the sign-in form works from
/// the keyboard, and nothing overflows at a phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_console_page_loads_under_a_strict_csp() {
    let addr = serve(connexa_http::console::router()).await;
    let b = Browser::start().await;
    b.goto(&format!("http://{addr}/")).await;

    // app.js ran: it asked for a session and focused the name field.
    b.wait_js(
        "the name field to have focus",
        T,
        "return document.activeElement && document.activeElement.id === 'account-name'",
    )
    .await;
    assert_eq!(b.client.title().await.expect("title"), "Connexa console");
    assert_eq!(
        b.js(
            "return document.documentElement.dataset.cspViolations || '0'",
            vec![]
        )
        .await,
        json!("0"),
        "the page's own files violate its CSP"
    );

    // An empty token is refused by the page itself (Enter submits the form).
    b.type_into("#token", "\n").await;
    b.wait_js(
        "the empty-token message",
        T,
        "return document.querySelector('#signin-error').textContent",
    )
    .await;
    assert_eq!(b.text("#signin-error").await, "Paste a token.");

    // The CSP is enforced: an inline script added to the page does not run.
    let ran = b
        .js(
            "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; \
             document.body.append(s); return window.__inline === 1",
            vec![],
        )
        .await;
    assert_eq!(
        ran,
        json!(false),
        "an inline script ran: the CSP is not enforced"
    );
    b.wait_js(
        "the CSP violation to be reported",
        T,
        "return document.documentElement.dataset.cspViolations === '1'",
    )
    .await;

    // Phone width: nothing wider than the viewport.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.goto(&format!("http://{addr}/")).await;
    b.wait_js(
        "the sign-in form",
        T,
        "return !!document.querySelector('#account-name:focus')",
    )
    .await;
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the page is wider than a phone: {overflow}"
    );
    b.screenshot(&screenshot_dir(), "console-signin-phone")
        .await;
    b.close().await;
}

/// A simulator fleet on `127.X.0.1...` (X per test, so tests never share
/// addresses) and a free port; the node list in the `[ip]:port:login:password`
/// format an operator would paste.
async fn fleet(second_octet: u8, mix: Vec<(Behaviour, u32)>, count: usize) -> (Fleet, String) {
    let fleet = Fleet::start(
        FleetSpec::new(count)
            .first_ip(Ipv4Addr::new(127, second_octet, 0, 1))
            .port(harness::free_port())
            .mix(mix),
    )
    .await
    .expect("start the simulator fleet");
    let mut list = Vec::new();
    fleet
        .write_list(ExportFormat::Pptp, &mut list)
        .expect("node list");
    (fleet, String::from_utf8(list).expect("utf-8 list"))
}

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

/// `[{id, status}]` of the table's rows, as the page shows them.
const TABLE_ROWS: &str = "return [...document.querySelectorAll('#rows tr[data-id]')]\
    .map(r => ({id: Number(r.dataset.id), status: r.dataset.status}))";

/// Waits until the job panel shows job `id` finished; returns its figures.
async fn wait_job_finished(b: &Browser, id: i64, timeout: Duration) -> serde_json::Value {
    b.wait_js(
        &format!("job {id} to reach 100 %"),
        timeout,
        &format!(
            "const el = document.querySelector('#job-list [data-job=\"{id}\"]'); \
             return el && el.dataset.finished === 'true' && \
               {{pct: el.dataset.pct, done: el.dataset.done, total: el.dataset.total, \
                 bar: el.querySelector('progress').value / el.querySelector('progress').max, \
                 text: el.querySelector('.figures').textContent, state: el.dataset.state}}"
        ),
    )
    .await
}

/// The whole operator's path: sign in, import a simulator fleet by pasting it
/// (with one bad row, reported by its line number), run a pipeline test and
/// watch the bar reach 100 % and the table refresh, filter by a status card and
/// check the table and the count against the API, then delete all matching and
/// check through the API that exactly those nodes are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_import_test_filter_and_delete_all_matching() {
    let (fleet, list) = fleet(
        61,
        vec![
            (Behaviour::Healthy, 5),
            (Behaviour::Refused, 4),
            (Behaviour::Garbage, 3),
        ],
        12,
    )
    .await;
    let server = Server::start();
    let b = Browser::start().await;
    let shots = screenshot_dir();
    sign_in(&b, &server).await;
    assert_eq!(b.text("#count").await, "0 nodes match");

    // Import: paste the list with one broken row on line 4.
    let mut lines: Vec<&str> = list.lines().collect();
    lines.insert(3, "10.0.0.300:admin:secret");
    let pasted = lines.join("\n");
    b.click("#import-open").await;
    b.wait_js(
        "the import dialog",
        T,
        "return document.querySelector('#import').open",
    )
    .await;
    b.type_into("#import-text", &pasted).await;
    b.click("#import-submit").await;
    b.wait_js(
        "the import report",
        T,
        "return document.querySelector('#import-report .import-summary')",
    )
    .await;
    let summary = b.text("#import-report .import-summary").await;
    assert!(summary.starts_with("Added 12,"), "{summary}");
    assert!(summary.ends_with("rejected 1."), "{summary}");
    let bad_lines = b
        .js(
            "return [...document.querySelectorAll('#import-report tr[data-line]')].map(r => Number(r.dataset.line))",
            vec![],
        )
        .await;
    assert_eq!(bad_lines, json!([4]), "the rejected row's line number");
    b.screenshot(&shots, "console-import").await;
    b.click("#import-close").await;
    b.wait_js(
        "the table to show the 12 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 12",
    )
    .await;
    assert_eq!(server.get("/nodes?limit=1").await["total"], json!(12));

    // Pipeline test on all matching nodes (no filter = every node).
    b.click("#actions input[value=matching]").await;
    b.click("[data-action=pipeline]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    let confirm = b.text("#confirm-text").await;
    assert!(confirm.contains("all 12 nodes"), "{confirm}");
    b.click("#confirm-ok").await;
    let job = b
        .wait_js(
            "the job to appear in the job panel",
            T,
            "const el = document.querySelector('#job-list [data-job]'); return el && Number(el.dataset.job)",
        )
        .await
        .as_i64()
        .expect("job id");
    let done = wait_job_finished(&b, job, Duration::from_secs(90)).await;
    assert_eq!(done["pct"], json!("100"), "{done}");
    assert_eq!(done["done"], json!("12"), "{done}");
    assert_eq!(done["total"], json!("12"), "{done}");
    assert_eq!(done["bar"].as_f64(), Some(1.0), "the bar is full: {done}");
    let api_job = server.get(&format!("/jobs/{job}")).await;
    assert_eq!(api_job["state"], json!("done"), "{api_job}");
    assert_eq!(api_job["progress"]["pending"], json!(0), "{api_job}");
    // The panel lists the latest five per-node results from the stream, each as
    // `GET /jobs/{id}` reports it (all 12 are in its `recent`).
    let recent = b
        .js(
            &format!(
                "return [...document.querySelectorAll('#job-list [data-job=\"{job}\"] .recent li')]\
                   .map(l => ({{node: Number(l.dataset.node), state: l.dataset.state}}))"
            ),
            vec![],
        )
        .await;
    let recent = recent.as_array().expect("recent");
    assert_eq!(recent.len(), 5, "{recent:?}");
    let api_recent = api_job["recent"].as_array().expect("recent");
    assert_eq!(api_recent.len(), 12, "{api_job}");
    for r in recent {
        assert!(
            api_recent
                .iter()
                .any(|a| a["node"] == r["node"] && a["state"] == r["state"]),
            "{r} is not among the job's results: {api_job}"
        );
    }

    // The table refreshed: no node is still not_tested, and each row shows the
    // status the API has.
    b.wait_js(
        "the table to refresh after the job",
        T,
        "const r = [...document.querySelectorAll('#rows tr[data-id]')]; \
         return r.length === 12 && r.every(x => x.dataset.status !== 'not_tested')",
    )
    .await;
    let api_all = server.get("/nodes?limit=100&sort=id").await;
    let api_rows: Vec<_> = api_all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| json!({"id": n["id"], "status": n["status"]}))
        .collect();
    assert_eq!(b.js(TABLE_ROWS, vec![]).await, json!(api_rows));
    b.screenshot(&shots, "console-after-pipeline").await;

    // Filter by the ping_failed card: the table and the count agree with the API.
    let failed_ids = server.ids("status=ping_failed").await;
    assert_eq!(
        failed_ids.len(),
        7,
        "refused and garbage nodes fail the light stage: {api_all}"
    );
    b.click("#cards [data-status=ping_failed]").await;
    b.wait_js(
        "the ping_failed filter",
        T,
        "const r = [...document.querySelectorAll('#rows tr[data-id]')]; \
         return document.querySelector('#cards [data-status=ping_failed]').getAttribute('aria-pressed') === 'true' \
           && r.length > 0 && r.every(x => x.dataset.status === 'ping_failed')",
    )
    .await;
    let shown: Vec<i64> = b
        .js(TABLE_ROWS, vec![])
        .await
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        shown, failed_ids,
        "the table shows exactly the API's ping_failed nodes"
    );
    assert_eq!(b.text("#count").await, "7 nodes match");
    assert_eq!(
        b.text("#cards [data-status=ping_failed] .n").await,
        failed_ids.len().to_string(),
        "the card's count"
    );
    b.screenshot(&shots, "console-filtered").await;

    // Delete all matching: the dialog names the exact count first.
    let survivors = server
        .ids("status=ping_light,ping_ok,auth_failed,not_tested")
        .await;
    assert_eq!(survivors.len(), 5, "{api_all}");
    b.click("#actions input[value=matching]").await;
    b.click("[data-action=delete]").await;
    b.wait_js(
        "the delete confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    assert_eq!(b.text("#confirm-title").await, "Delete 7 nodes?");
    let text = b.text("#confirm-text").await;
    assert!(
        text.contains("all 7 nodes matching status ping_failed"),
        "{text}"
    );
    b.screenshot(&shots, "console-confirm-delete").await;
    b.click("#confirm-ok").await;
    b.wait_js(
        "the table to empty",
        T,
        "return document.querySelector('#count').dataset.total === '0'",
    )
    .await;
    assert_eq!(server.ids("status=ping_failed").await, Vec::<i64>::new());
    for id in &failed_ids {
        let (status, _) = server.api("GET", &format!("/nodes/{id}")).await;
        assert_eq!(status, 404, "deleted node {id} still answers");
    }
    assert_eq!(
        server.ids("").await,
        survivors,
        "exactly the matching nodes are gone"
    );
    assert_eq!(
        b.js(
            "return document.documentElement.dataset.cspViolations || '0'",
            vec![]
        )
        .await,
        json!("0")
    );

    // Back to every node, for the main view's screenshot.
    b.click("#cards [data-status='']").await;
    b.wait_js(
        "the unfiltered table",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 5",
    )
    .await;
    b.client.set_window_size(1280, 1200).await.expect("resize");
    b.js(
        "const t = document.querySelector('#toast'); t.classList.remove('show'); t.hidden = true",
        vec![],
    )
    .await;
    b.screenshot(&shots, "console-main").await;

    // Phone width (reloaded: the token survives in sessionStorage): the table
    // becomes cards, the filters start folded, nothing scrolls sideways.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.client.refresh().await.expect("reload");
    b.wait_js(
        "the phone layout",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 5 \
           && !document.querySelector('#filters-box').open \
           && [...document.querySelectorAll('#worker-rows tr[data-name]')].some((r) => r.dataset.alive === 'true') \
           && document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    // The workers panel lists this server (it registers as a worker) as cards.
    let card = b
        .js(
            "const r = [...document.querySelectorAll('#worker-rows tr[data-name]')].find((r) => r.dataset.alive === 'true'); \
             return {text: r.textContent, display: getComputedStyle(r).display, \
               wide: r.getBoundingClientRect().right > window.innerWidth};",
            vec![],
        )
        .await;
    assert_eq!(card["display"], "block", "{card}");
    assert_eq!(card["wide"], false, "{card}");
    let text = card["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("alive") && text.contains("s ago") && text.contains("jobs"),
        "{card}"
    );
    b.screenshot(&shots, "console-main-phone").await;
    b.close().await;
    drop(fleet);
    drop(server);
}

/// Importing by file upload; reloading the page while a job runs re-attaches its
/// progress bar to the SSE stream, which then goes on to 100 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reload_reattaches_to_a_running_job() {
    let (fleet, list) = fleet(
        62,
        vec![
            (Behaviour::Healthy, 2),
            (Behaviour::Slow(Duration::from_millis(6000)), 4),
        ],
        6,
    )
    .await;
    let server = Server::start();
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    // This time the list is uploaded as a file (the dialog's file input).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fleet.txt");
    std::fs::write(&file, &list).expect("write the list");
    let up = upload_in_dialog(&b, &file).await;
    assert!(
        up.progress.is_empty(),
        "a small file imports at once: {up:?}"
    );
    b.wait_js(
        "the 6 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 6",
    )
    .await;

    // Select two rows and the rest by "select page": a light test on the 6 selected.
    b.click("#select-page").await;
    assert_eq!(b.text("#scope-selected").await, "selected rows (6)");
    b.click("[data-action=light]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await;
    let job = b
        .wait_js(
            "the job in the panel",
            T,
            "const el = document.querySelector('#job-list [data-job]'); return el && el.dataset.events && Number(el.dataset.job)",
        )
        .await
        .as_i64()
        .expect("job id");

    // The tab remembers the last event id, to resume after it when reloaded.
    let key = format!("connexa.job.{job}.last-event");
    let cursor = b
        .wait_js(
            "the remembered event id",
            T,
            &format!("return sessionStorage.getItem('{key}')"),
        )
        .await;
    assert!(
        cursor.as_str().is_some_and(|c| c.contains('.')),
        "SEQ.ITEM: {cursor}"
    );

    // Reload while the slow nodes still hold the job open.
    b.client.refresh().await.expect("reload");
    let state = server.get(&format!("/jobs/{job}")).await;
    assert_ne!(
        state["state"],
        json!("done"),
        "the job ended before the reload: {state}"
    );
    let attached = b
        .wait_js(
            "the job panel to re-attach after the reload",
            T,
            &format!(
                "const el = document.querySelector('#job-list [data-job=\"{job}\"]'); \
                 return el && Number(el.dataset.events) > 0 && {{pct: Number(el.dataset.pct), finished: el.dataset.finished === 'true'}}"
            ),
        )
        .await;
    assert_eq!(
        attached["finished"],
        json!(false),
        "re-attached only after the end: {attached}"
    );
    b.screenshot(&screenshot_dir(), "console-job-running").await;
    let done = wait_job_finished(&b, job, Duration::from_secs(60)).await;
    assert_eq!(done["pct"], json!("100"), "{done}");
    assert_eq!(done["total"], json!("6"), "{done}");
    assert_eq!(
        server.get(&format!("/jobs/{job}")).await["state"],
        json!("done")
    );
    assert_eq!(
        b.js(&format!("return sessionStorage.getItem('{key}')"), vec![])
            .await,
        serde_json::Value::Null,
        "a finished job's event id is forgotten"
    );
    b.close().await;
    drop(fleet);
    drop(server);
}

/// Paging, sorting, the per-row password reveal, the history drawer, and
/// keyboard use (a status card pressed with Enter, the drawer closed with Escape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_paging_sorting_reveal_history_and_keyboard() {
    let (fleet, list) = fleet(63, vec![(Behaviour::Healthy, 1)], 30).await;
    let server = Server::start();
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.click("#import-open").await;
    b.type_into("#import-text", &list).await;
    b.click("#import-submit").await;
    b.wait_js(
        "the import report",
        T,
        "return document.querySelector('#import-report .import-summary')",
    )
    .await;
    b.click("#import-close").await;

    // 25 rows a page: page 1 then page 2 are the API's pages.
    b.client
        .find(fantoccini::Locator::Css("#limit"))
        .await
        .expect("page size")
        .select_by_value("25")
        .await
        .expect("select 25");
    b.wait_js(
        "25 rows",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 25",
    )
    .await;
    assert_eq!(b.text("#page-info").await, "1–25 of 30 (page 1 of 2)");
    b.click("#next").await;
    b.wait_js(
        "page 2",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 5",
    )
    .await;
    let page2: Vec<i64> = server.get("/nodes?offset=25&limit=25&sort=id").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["id"].as_i64().expect("id"))
        .collect();
    let shown = b.js(TABLE_ROWS, vec![]).await;
    let shown: Vec<i64> = shown
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(shown, page2);
    assert!(
        b.client
            .find(fantoccini::Locator::Css("#next"))
            .await
            .expect("next")
            .attr("disabled")
            .await
            .expect("attr")
            .is_some()
    );

    // Sort by address, descending (second click): the API's order.
    b.click("#prev").await;
    b.click("th[data-sort=ip] button").await;
    b.click("th[data-sort=ip] button").await;
    b.wait_js(
        "descending sort by address",
        T,
        "return document.querySelector('th[data-sort=ip]').getAttribute('aria-sort') === 'descending' \
           && document.querySelectorAll('#rows tr[data-id]').length === 25",
    )
    .await;
    let api_order: Vec<i64> = server.get("/nodes?limit=25&sort=ip&desc=true").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["id"].as_i64().expect("id"))
        .collect();
    let shown = b.js(TABLE_ROWS, vec![]).await;
    let shown: Vec<i64> = shown
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(shown, api_order);

    // Passwords are masked until one row is revealed (with reveal=true).
    let first = api_order[0];
    let secret = server.get(&format!("/nodes/{first}?reveal=true")).await["password"]
        .as_str()
        .expect("password")
        .to_owned();
    assert_ne!(secret, "***");
    let page_text = |b: &Browser| {
        let b = b.client.clone();
        async move {
            b.execute("return document.body.innerText", vec![])
                .await
                .expect("text")
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert!(
        !page_text(&b).await.contains(&secret),
        "a password is shown unmasked"
    );
    b.click(&format!("[data-reveal=\"{first}\"]")).await;
    b.wait_js(
        "the revealed password",
        T,
        &format!("return document.querySelector('#rows tr[data-id=\"{first}\"] .pw').textContent"),
    )
    .await;
    b.wait_js(
        "the revealed password",
        T,
        &format!(
            "return document.querySelector('#rows tr[data-id=\"{first}\"] .pw').textContent === {}",
            json!(secret)
        ),
    )
    .await;
    assert_eq!(
        b.js(
            &format!("return document.querySelector('[data-reveal=\"{first}\"]').getAttribute('aria-pressed')"),
            vec![]
        )
        .await,
        json!("true")
    );
    b.click(&format!("[data-reveal=\"{first}\"]")).await;
    b.wait_js(
        "the password hidden again",
        T,
        &format!("return document.querySelector('#rows tr[data-id=\"{first}\"] .pw').textContent === '••••••'"),
    )
    .await;

    // A light test on one selected row, then its history in the drawer.
    b.click(&format!(
        "#rows tr[data-id=\"{first}\"] input[type=checkbox]"
    ))
    .await;
    assert_eq!(b.text("#scope-selected").await, "selected rows (1)");
    b.click("#actions input[value=selected]").await;
    b.click("[data-action=light]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    assert_eq!(
        b.text("#confirm-title").await,
        "Run a light test on 1 node?"
    );
    b.click("#confirm-ok").await;
    let job = b
        .wait_js(
            "the job",
            T,
            "const el = document.querySelector('#job-list [data-job]'); return el && Number(el.dataset.job)",
        )
        .await
        .as_i64()
        .expect("job id");
    wait_job_finished(&b, job, Duration::from_secs(30)).await;
    b.wait_js(
        "the node's new status in the table",
        T,
        &format!("return document.querySelector('#rows tr[data-id=\"{first}\"]').dataset.status === 'ping_light'"),
    )
    .await;
    b.click(&format!(
        "#rows tr[data-id=\"{first}\"] td:last-child button"
    ))
    .await;
    b.wait_js(
        "the history drawer",
        T,
        "return document.querySelector('#history').open",
    )
    .await;
    let hist = b
        .wait_js(
            "a history row",
            T,
            "const r = document.querySelector('#history-rows tr'); return r && [...r.cells].map(c => c.textContent)",
        )
        .await;
    assert_eq!(hist[1], json!("Not tested → Ping light"), "{hist}");
    assert_eq!(hist[2], json!("tested"), "{hist}");
    assert_eq!(hist[4], json!(job.to_string()), "{hist}");
    b.screenshot(&screenshot_dir(), "console-history").await;
    // Escape closes the drawer and the focus comes back to the page.
    b.client
        .active_element()
        .await
        .expect("focus")
        .send_keys(&fantoccini::key::Key::Escape.to_string())
        .await
        .expect("Escape");
    b.wait_js(
        "the drawer to close",
        T,
        "return !document.querySelector('#history').open",
    )
    .await;

    // A refresh re-renders the table but keeps the focus on the same control.
    b.js(
        &format!(
            "const r = document.querySelector('#rows tr[data-id=\"{first}\"]'); r.__old = true; \
             r.querySelector('input[type=checkbox]').focus(); document.querySelector('#refresh').click()"
        ),
        vec![],
    )
    .await;
    b.wait_js(
        "the re-rendered row to have the focus",
        T,
        &format!(
            "const r = document.querySelector('#rows tr[data-id=\"{first}\"]'); \
             return r && !r.__old && document.activeElement === r.querySelector('input[type=checkbox]')"
        ),
    )
    .await;

    // Keyboard: focus the "Ping light" card and press Enter.
    b.js(
        "document.querySelector('#cards [data-status=ping_light]').focus()",
        vec![],
    )
    .await;
    b.client
        .active_element()
        .await
        .expect("focus")
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .expect("Enter");
    b.wait_js(
        "the ping_light filter from the keyboard",
        T,
        "return document.querySelector('#cards [data-status=ping_light]').getAttribute('aria-pressed') === 'true' \
           && document.querySelector('#count').dataset.total === '1'",
    )
    .await;
    assert_eq!(
        b.js("return document.activeElement.dataset.status", vec![])
            .await,
        json!("ping_light"),
        "the focus stays on the card after the cards re-render"
    );
    b.close().await;
    drop(fleet);
    drop(server);
}

/// Export downloads exactly what the API exports for the selected rows; Cancel
/// in the job panel ends the job as cancelled and its bar still reaches 100 %
/// (every item gets a result); markup in node data is shown as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cancel_export_and_node_markup_stays_text() {
    let (fleet, list) = fleet(64, vec![(Behaviour::Healthy, 2), (Behaviour::Silent, 4)], 6).await;
    let server = Server::start();
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.click("#import-open").await;
    b.type_into("#import-text", &list).await;
    b.click("#import-submit").await;
    b.wait_js(
        "the import report",
        T,
        "return document.querySelector('#import-report .import-summary')",
    )
    .await;
    b.click("#import-close").await;
    b.wait_js(
        "the 6 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 6",
    )
    .await;

    // Export the first two rows as CSV: capture the download the page makes.
    b.js(
        "window.__blobs = new Map(); window.__downloads = []; \
         const create = URL.createObjectURL; \
         URL.createObjectURL = (blob) => { const u = create(blob); window.__blobs.set(u, blob); return u; }; \
         HTMLAnchorElement.prototype.click = function () { \
           const a = this; window.__blobs.get(a.href).text() \
             .then(t => window.__downloads.push({name: a.download, text: t})); }",
        vec![],
    )
    .await;
    b.click("#rows tr[data-id='1'] input[type=checkbox]").await;
    b.click("#rows tr[data-id='2'] input[type=checkbox]").await;
    b.client
        .find(fantoccini::Locator::Css("#export-format"))
        .await
        .expect("format")
        .select_by_value("csv")
        .await
        .expect("csv");
    b.click("[data-action=export]").await;
    let download = b
        .wait_js("the download", T, "return window.__downloads[0]")
        .await;
    let (status, _) = server.api("GET", "/export?format=csv&ids=1,2").await;
    assert_eq!(status, 200);
    let api_csv = {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        let req = hyper::Request::get(format!("{}/api/v1/export?format=csv&ids=1,2", server.base))
            .header("authorization", format!("Bearer {}", server.token))
            .body(http_body_util::Empty::new())
            .expect("request");
        let res = client.request(req).await.expect("export");
        String::from_utf8(
            res.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec(),
        )
        .expect("utf-8")
    };
    assert_eq!(
        download["text"],
        json!(api_csv),
        "the download is the API's export"
    );
    assert_eq!(
        api_csv.lines().count(),
        3,
        "a header and two nodes: {api_csv}"
    );
    assert!(
        download["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(".csv")),
        "{download}"
    );

    // A light test on every node; the silent ones hold it open until Cancel.
    b.click("#actions input[value=matching]").await;
    b.click("[data-action=light]").await;
    b.wait_js(
        "the confirmation",
        T,
        "return document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await;
    let job = b
        .wait_js(
            "the job to report the healthy nodes",
            T,
            "const el = document.querySelector('#job-list [data-job]'); \
             return el && el.dataset.done === '2' && Number(el.dataset.job)",
        )
        .await
        .as_i64()
        .expect("job id");
    b.click(&format!("#job-list [data-job=\"{job}\"] .job-cancel"))
        .await;
    let done = wait_job_finished(&b, job, Duration::from_secs(30)).await;
    assert_eq!(done["pct"], json!("100"), "{done}");
    assert_eq!(done["state"], json!("cancelled"), "{done}");
    let api_job = server.get(&format!("/jobs/{job}")).await;
    assert_eq!(api_job["state"], json!("cancelled"), "{api_job}");
    assert_eq!(api_job["progress"]["ok"], json!(2), "{api_job}");
    assert_eq!(api_job["progress"]["cancelled"], json!(4), "{api_job}");

    // Markup in node data stays text: nothing is parsed as HTML, nothing runs.
    let hostile = "<img src=x onerror=\"window.__xss=1\"><b>bold</b>";
    let (status, created) = server
        .api_json(
            "POST",
            "/nodes",
            Some(json!({"ip": "127.64.9.9", "login": "x", "password": "y",
                        "city": hostile, "comment": hostile})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    b.click("#refresh").await;
    let cell = b
        .wait_js(
            "the node with markup in its city",
            T,
            &format!("const r = document.querySelector('#rows tr[data-id=\"{id}\"]'); return r && r.cells[6].textContent"),
        )
        .await;
    assert_eq!(cell, json!(hostile));
    b.click(&format!("#rows tr[data-id=\"{id}\"] td:last-child button"))
        .await;
    b.wait_js(
        "the history drawer",
        T,
        "return document.querySelector('#history').open",
    )
    .await;
    let facts = b.text("#history-node").await;
    assert!(facts.contains(hostile), "{facts}");
    assert_eq!(
        b.js(
            "return [window.__xss === undefined, document.querySelectorAll('#rows img, #history img, #rows b').length]",
            vec![]
        )
        .await,
        json!([true, 0]),
        "node data was parsed as HTML"
    );
    b.close().await;
    drop(fleet);
    drop(server);
}

/// What the import dialog showed for one file upload.
#[derive(Debug)]
struct Upload {
    /// Every "Importing in the background…" text the dialog showed, in order.
    progress: Vec<String>,
    summary: String,
    /// The line numbers of the report's "Rows not imported" table.
    bad_lines: serde_json::Value,
}

/// Opens the import dialog, chooses `file` in its file input, submits, and
/// waits for the report. A MutationObserver (installed before the submit)
/// records each progress text the dialog shows, however briefly.
async fn upload_in_dialog(b: &Browser, file: &std::path::Path) -> Upload {
    b.click("#import-open").await;
    b.wait_js(
        "the import dialog",
        T,
        "return document.querySelector('#import').open",
    )
    .await;
    b.js(
        "window.__progress = []; \
         const report = document.querySelector('#import-report'); \
         new MutationObserver(() => { \
           const p = report.querySelector('.import-progress'); \
           if (p) window.__progress.push(p.textContent); \
         }).observe(report, {childList: true, subtree: true, characterData: true}); \
         return true",
        vec![],
    )
    .await;
    b.client
        .find(fantoccini::Locator::Css("#import-file"))
        .await
        .expect("file input")
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    b.click("#import-submit").await;
    b.wait_js(
        "the import report",
        T,
        "return document.querySelector('#import-report .import-summary')",
    )
    .await;
    let progress = b
        .js("return window.__progress", vec![])
        .await
        .as_array()
        .expect("progress texts")
        .iter()
        .map(|t| t.as_str().expect("a text").to_owned())
        .collect();
    let summary = b.text("#import-report .import-summary").await;
    let bad_lines = b
        .js(
            "return [...document.querySelectorAll('#import-report tr[data-line]')].map(r => Number(r.dataset.line))",
            vec![],
        )
        .await;
    // The dialog was reset for the next import.
    assert_eq!(
        b.js(
            "return document.querySelector('#import-file').files.length",
            vec![]
        )
        .await,
        json!(0),
        "the file input was not cleared"
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#import-submit').disabled",
            vec![]
        )
        .await,
        json!(false)
    );
    b.click("#import-close").await;
    Upload {
        progress,
        summary,
        bad_lines,
    }
}

/// A file over the server's background threshold is imported in the
/// background: the dialog shows "Importing in the background… N %" while it
/// polls `GET /imports/{id}`, then the same report a synchronous import shows
/// (counts and the malformed rows' line numbers), and the table shows the added
/// nodes. The same file under the default threshold (4 MiB) is imported
/// synchronously: no progress, no background import in `GET /imports`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_background_import_of_a_large_file() {
    // 45 good rows (never tested: no fleet behind them), two malformed ones on
    // lines 5 and 30, and a duplicate of line 1 at the end: 48 lines.
    let places = ["US:Texas:75001", "DE:Berlin:10115", "FR:Paris:75002"];
    let mut lines: Vec<String> = (0..45)
        .map(|i| format!("127.63.0.{}:user{i}:pw{i}:{}", i + 1, places[i % 3]))
        .collect();
    lines.insert(4, "127.63.1.1:admin".into());
    lines.insert(29, "127.63.1.300:admin:x".into());
    lines.push(lines[0].clone());
    let list = lines.join("\n") + "\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("large-fleet.txt");
    std::fs::write(&file, &list).expect("write the list");
    let expected_summary = "Added 45, replaced 0, duplicates 1, conflicts 0, rejected 2.";

    // Threshold 0 MiB: any upload with a length (this one is list.len() bytes)
    // goes to the background.
    let server = Server::start_with(&["--background-import-mib", "0"]);
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    assert_eq!(b.text("#count").await, "0 nodes match");
    let up = upload_in_dialog(&b, &file).await;
    assert!(
        !up.progress.is_empty(),
        "the dialog never showed the background progress (report: {})",
        up.summary
    );
    let bytes = list.len();
    // "Importing in the background… 12.5 % (1,024 of 1,815 bytes)" (the
    // numbers in the browser's locale: only their digits are compared).
    let digits = |t: &str| -> u64 {
        t.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("no number in {t:?}"))
    };
    for p in &up.progress {
        let rest = p
            .strip_prefix("Importing in the background… ")
            .and_then(|r| r.strip_suffix(" bytes)"))
            .unwrap_or_else(|| panic!("progress text: {p:?}"));
        let (pct, counts) = rest
            .split_once(" % (")
            .unwrap_or_else(|| panic!("progress text: {p:?}"));
        let (done, total) = counts
            .split_once(" of ")
            .unwrap_or_else(|| panic!("progress text: {p:?}"));
        assert!(digits(pct) < 1000, "running, so under 100.0 %: {p:?}");
        assert_eq!(digits(total), bytes as u64, "{p:?}");
        assert!(digits(done) <= bytes as u64, "{p:?}");
    }
    assert_eq!(up.summary, expected_summary);
    assert_eq!(up.bad_lines, json!([5, 30]), "the malformed rows' lines");
    // The API knows exactly one background import, done, of the whole file.
    let imports = server.get("/imports").await;
    let imports = imports.as_array().expect("imports");
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(imports[0]["state"], json!("done"), "{imports:?}");
    assert_eq!(imports[0]["bytes_total"], json!(bytes), "{imports:?}");
    assert_eq!(imports[0]["percent"], json!(100.0), "{imports:?}");
    assert_eq!(
        imports[0]["source"],
        json!("large-fleet.txt"),
        "named after the file: {imports:?}"
    );
    let id = imports[0]["id"].as_str().expect("import id");
    let report = server.get(&format!("/imports/{id}")).await;
    let s = &report["summary"];
    assert_eq!(s["added"].as_array().map(Vec::len), Some(45), "{report}");
    assert_eq!(s["duplicates"][0]["line"], json!(48), "{report}");
    // The table shows the 45 added nodes, those the API has.
    b.wait_js(
        "the table to show the 45 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 45",
    )
    .await;
    assert_eq!(b.text("#count").await, "45 nodes match");
    let shown: Vec<i64> = b
        .js(TABLE_ROWS, vec![])
        .await
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(shown, server.ids("").await);
    assert_eq!(
        b.js(
            "return document.documentElement.dataset.cspViolations || '0'",
            vec![]
        )
        .await,
        json!("0")
    );
    drop(server);

    // The default threshold: the same upload is synchronous, with the same report.
    let server = Server::start();
    sign_in(&b, &server).await;
    let up = upload_in_dialog(&b, &file).await;
    assert_eq!(
        up.progress,
        Vec::<String>::new(),
        "a synchronous import showed background progress"
    );
    assert_eq!(up.summary, expected_summary);
    assert_eq!(up.bad_lines, json!([5, 30]));
    assert_eq!(server.get("/imports").await, json!([]));
    b.wait_js(
        "the table to show the 45 nodes",
        T,
        "return document.querySelectorAll('#rows tr[data-id]').length === 45",
    )
    .await;
    assert_eq!(server.ids("").await.len(), 45);
    b.close().await;
    drop(server);
}

/// "Where is it really": a server whose config names a GEO database; two
/// nodes imported through the API, a `geo` job, then the table shows the
/// lookup under the seller's location (a mismatch in the danger colour), the
/// node drawer the lookup's facts, and the folded GEO filter narrows the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_geo_lookup_shows_where_nodes_really_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = connexa_core::geo::MmdbWriter::new("GeoLite2-City");
    w.insert(
        "127.0.0.0/8".parse().unwrap(),
        json!({"country": {"iso_code": "US", "names": {"en": "United States"}},
               "subdivisions": [{"names": {"en": "Texas"}}], "city": {"names": {"en": "Austin"}},
               "autonomous_system_number": 64500, "autonomous_system_organization": "Loopback Transit"}),
    )
    .unwrap();
    let db = dir.path().join("city.mmdb");
    std::fs::write(&db, w.to_bytes().unwrap()).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[geo]\ncity_db = {:?}\n", db.display().to_string()),
    )
    .unwrap();
    let server = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    for (ip, country, state) in [
        ("127.0.0.5", "United States", "Texas"),
        ("127.0.0.7", "Germany", "Bavaria"),
    ] {
        let (status, body) = server
            .api_json(
                "POST",
                "/nodes",
                Some(json!({"ip": ip, "login": "admin", "password": "pw", "country": country, "state": state})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, job) = server
        .api_json("POST", "/jobs", Some(json!({"kind": "geo", "all": true})))
        .await;
    assert_eq!(status, 202, "{job}");
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    let id = job["id"].as_i64().unwrap();
    let mut finished = false;
    for _ in 0..200 {
        let j = server.get(&format!("/jobs/{id}")).await;
        if j["state"] == "done" {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(finished, "the geo job did not finish");
    b.goto(&format!("{}/", server.base)).await;
    let lines = b
        .wait_js(
            "the GEO lines",
            T,
            "const g = [...document.querySelectorAll('#rows tr[data-id] .geo')]; \
             return g.length === 2 && g.map(e => [e.textContent, e.classList.contains('mismatch')])",
        )
        .await;
    assert_eq!(
        lines,
        json!([
            ["⌖ Austin, Texas, US · AS64500", false],
            ["≠ Austin, Texas, US · AS64500", true]
        ])
    );
    b.click("#rows tr[data-id=\"2\"] td:last-child button")
        .await;
    b.wait_js(
        "the node drawer",
        T,
        "return document.querySelector('#history').open",
    )
    .await;
    let facts = b.text("#history-node").await;
    assert!(
        facts.contains("Germany") && facts.contains("Austin, Texas, United States"),
        "{facts}"
    );
    assert!(facts.contains("AS64500 Loopback Transit"), "{facts}");
    b.close().await;
    drop(server);
}
