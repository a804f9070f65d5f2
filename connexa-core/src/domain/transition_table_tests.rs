//! Every cell of the DESIGN.md transition table, transcribed literally.

use super::*;

const COLUMNS: [&str; 12] = [
    "reached 0",
    "reached 1",
    "reached 1, auth rejected",
    "reached 2",
    "reached 3",
    "ServiceStarted",
    "ServiceStartFailed",
    "ServiceStopped",
    "HealthOk",
    "HealthFailed",
    "Inconclusive",
    "Inconclusive, proven 1",
];

/// Rows exactly as in the design table; `=` keeps the status, `refused` is an error.
const TABLE: [(&str, [&str; 12]); 8] = [
    (
        "not_tested",
        [
            "ping_failed",
            "ping_light",
            "auth_failed",
            "ping_ok",
            "speed_ok",
            "refused",
            "refused",
            "=",
            "=",
            "=",
            "=",
            "ping_light",
        ],
    ),
    (
        "ping_failed",
        [
            "ping_failed",
            "ping_light",
            "auth_failed",
            "ping_ok",
            "speed_ok",
            "refused",
            "refused",
            "=",
            "=",
            "=",
            "=",
            "ping_light",
        ],
    ),
    (
        "ping_light",
        [
            "ping_failed",
            "ping_light",
            "auth_failed",
            "ping_ok",
            "speed_ok",
            "refused",
            "refused",
            "=",
            "=",
            "=",
            "=",
            "ping_light",
        ],
    ),
    (
        "auth_failed",
        [
            "ping_failed",
            "auth_failed",
            "auth_failed",
            "ping_ok",
            "speed_ok",
            "refused",
            "refused",
            "=",
            "=",
            "=",
            "=",
            "=",
        ],
    ),
    (
        "ping_ok",
        [
            "=", "=", "=", "=", "speed_ok", "refused", "refused", "=", "=", "=", "=", "=",
        ],
    ),
    (
        "speed_ok",
        [
            "=", "=", "=", "=", "=", "online", "=", "=", "=", "=", "=", "=",
        ],
    ),
    (
        "online",
        [
            "=", "=", "=", "=", "=", "=", "=", "speed_ok", "=", "offline", "=", "=",
        ],
    ),
    (
        "offline",
        [
            "=", "=", "=", "=", "=", "online", "=", "speed_ok", "online", "=", "=", "=",
        ],
    ),
];

pub(super) fn endpoint() -> ServiceEndpoint {
    ServiceEndpoint {
        host: "127.0.0.1".into(),
        port: 10800,
        username: "u".into(),
        password: Secret::new("p"),
    }
}

/// One representative event per column.
pub(super) fn column_event(col: usize) -> Event {
    match col {
        0 => Event::Tested(Outcome::failed(Level::None, Failure::Refused)),
        1 => Event::Tested(Outcome::success(Level::Light)),
        2 => Event::Tested(Outcome::failed(
            Level::Light,
            Failure::AuthRejected {
                code: Some(691),
                message: "bad password".into(),
            },
        )),
        3 => Event::Tested(Outcome::success(Level::Auth)),
        4 => Event::Tested(Outcome::success(Level::Speed)),
        5 => Event::ServiceStarted(endpoint()),
        6 => Event::ServiceStartFailed("bind failed".into()),
        7 => Event::ServiceStopped,
        8 => Event::HealthOk,
        9 => Event::HealthFailed("check target unreachable".into()),
        10 => Event::Inconclusive {
            reason: "budget exceeded after 2 s at stage auth".into(),
            proven: Level::None,
            measurements: Measurements::default(),
        },
        11 => Event::Inconclusive {
            reason: "budget exceeded after 9 s at stage auth".into(),
            proven: Level::Light,
            measurements: Measurements::default(),
        },
        _ => unreachable!(),
    }
}

#[test]
fn every_cell_of_the_design_table() {
    let mut checked = 0;
    for (row, cells) in TABLE {
        let current: Status = row.parse().unwrap();
        for (col, want) in cells.iter().enumerate() {
            let got = transition(current, &column_event(col));
            let cell = format!("{row} × {}", COLUMNS[col]);
            match *want {
                "refused" => assert!(got.is_err(), "{cell}: expected refused, got {got:?}"),
                "=" => assert_eq!(got, Ok(current), "{cell}"),
                name => assert_eq!(got, Ok(name.parse().unwrap()), "{cell}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 96);
}

#[test]
fn failures_that_still_reached_a_level_are_judged_by_the_level() {
    // A speed test that logged in but was slow reached level 2: ping_ok, never ping_failed.
    let slow = Event::Tested(Outcome::failed(
        Level::Auth,
        Failure::TooSlow {
            down_mbps: 0.1,
            threshold_mbps: 1.0,
        },
    ));
    assert_eq!(transition(Status::NotTested, &slow), Ok(Status::PingOk));
    assert_eq!(transition(Status::PingLight, &slow), Ok(Status::PingOk));
    // A light probe that answered but whose login phase timed out is still ping_light.
    let lcp = Event::Tested(Outcome::failed(Level::Light, Failure::AuthTimeout));
    assert_eq!(transition(Status::PingFailed, &lcp), Ok(Status::PingLight));
}

#[test]
fn our_budget_running_out_is_never_evidence_against_the_node() {
    let overrun = |proven| Event::Inconclusive {
        reason: "budget exceeded after 2 s at stage auth".into(),
        proven,
        measurements: Measurements::default(),
    };
    // Nothing proven: every status is kept, also the ones a failed test would move.
    for s in Status::ALL {
        assert_eq!(transition(s, &overrun(Level::None)), Ok(s), "{s}");
    }
    // A pipeline that passed light before its budget ran out in auth earns ping_light,
    // exactly as a passed light test would; an auth_failed node stays auth_failed.
    assert_eq!(
        transition(Status::NotTested, &overrun(Level::Light)),
        transition(
            Status::NotTested,
            &Event::Tested(Outcome::success(Level::Light))
        )
    );
    assert_eq!(
        transition(Status::PingFailed, &overrun(Level::Light)),
        Ok(Status::PingLight)
    );
    assert_eq!(
        transition(Status::AuthFailed, &overrun(Level::Light)),
        Ok(Status::AuthFailed)
    );
    // A login proven before the speed stage overran: ping_ok.
    assert_eq!(
        transition(Status::PingLight, &overrun(Level::Auth)),
        Ok(Status::PingOk)
    );
}

#[test]
fn refusal_tells_the_operator_what_to_run() {
    let err = transition(Status::PingOk, &Event::ServiceStarted(endpoint())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ping_ok") && msg.contains("connexa test speed"),
        "{msg}"
    );
    assert!(msg.contains("mark a service started"), "{msg}");
    let err = transition(Status::NotTested, &Event::ServiceStartFailed("x".into())).unwrap_err();
    assert!(err.to_string().contains("connexa test pipeline"), "{err}");
    assert!(
        err.to_string().contains("record a failed service start"),
        "{err}"
    );
}

#[test]
fn event_kinds_have_distinct_stored_names() {
    let kinds: Vec<EventKind> = (0..COLUMNS.len()).map(|c| column_event(c).kind()).collect();
    let mut names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    names.dedup();
    assert_eq!(
        names,
        [
            "tested",
            "service_started",
            "service_start_failed",
            "service_stopped",
            "health_ok",
            "health_failed",
            "inconclusive"
        ]
    );
    assert_eq!(
        EventKind::ALL.map(EventKind::as_str),
        names.as_slice(),
        "EventKind::ALL lists every kind once"
    );
    for k in kinds {
        assert_eq!(k.to_string(), k.as_str());
    }
}

#[test]
fn allows_refuses_exactly_the_refused_cells_of_the_table() {
    let mut refused = 0;
    for (row, cells) in TABLE {
        let current: Status = row.parse().unwrap();
        for (col, want) in cells.iter().enumerate() {
            let event = column_event(col);
            let cell = format!("{row} × {}", COLUMNS[col]);
            let asked = transition::allows(current, event.kind());
            assert_eq!(asked.is_err(), *want == "refused", "{cell}: {asked:?}");
            // The same answer, word for word, as applying the event.
            assert_eq!(
                asked,
                transition(current, &event).map(|_| ()),
                "{cell}: allows and transition disagree"
            );
            refused += usize::from(asked.is_err());
        }
    }
    // Two service columns × the five unverified statuses.
    assert_eq!(refused, 10);
    let msg = transition::allows(Status::AuthFailed, EventKind::ServiceStarted)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("mark a service started") && msg.contains("connexa test pipeline"),
        "{msg}"
    );
}
