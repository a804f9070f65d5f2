//! Property tests: the five invariants of the design, over arbitrary event sequences.

use proptest::prelude::*;

use super::transition_table_tests::endpoint;
use super::*;

fn status() -> impl Strategy<Value = Status> {
    proptest::sample::select(Status::ALL.to_vec())
}

fn level() -> impl Strategy<Value = Level> {
    proptest::sample::select(Level::ALL.to_vec())
}

fn failure() -> impl Strategy<Value = Option<Failure>> {
    prop_oneof![
        Just(None),
        Just(Some(Failure::Refused)),
        Just(Some(Failure::HandshakeTimeout)),
        Just(Some(Failure::AuthRejected {
            code: Some(691),
            message: String::new()
        })),
        Just(Some(Failure::AuthRejected {
            code: None,
            message: "E=649".into()
        })),
        Just(Some(Failure::TooSlow {
            down_mbps: 0.3,
            threshold_mbps: 1.0
        })),
        Just(Some(Failure::Timeout)),
        Just(Some(Failure::Crashed {
            detail: "panic".into()
        })),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (level(), failure()).prop_map(|(reached, failure)| Event::Tested(Outcome {
            reached,
            failure,
            measurements: Measurements::default(),
        })),
        1 => Just(Event::ServiceStarted(endpoint())),
        1 => Just(Event::ServiceStartFailed("boom".into())),
        1 => Just(Event::ServiceStopped),
        1 => Just(Event::HealthOk),
        1 => Just(Event::HealthFailed("down".into())),
        2 => level().prop_map(|proven| Event::Inconclusive {
            reason: "budget exceeded after 2 s at stage auth".into(),
            proven,
            measurements: Measurements::default(),
        }),
    ]
}

/// Runs a sequence through `transition`, refused events leaving the status alone
/// (exactly what the store does), and returns every (before, event, after).
fn run(start: Status, events: &[Event]) -> Vec<(Status, Event, Status)> {
    let mut cur = start;
    let mut steps = Vec::with_capacity(events.len());
    for e in events {
        let next = transition(cur, e).unwrap_or(cur);
        steps.push((cur, e.clone(), next));
        cur = next;
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Invariant 1: a node at level 3 never leaves level 3.
    #[test]
    fn level_3_is_never_left(start in status(), events in prop::collection::vec(event(), 0..64)) {
        let mut seen_verified = start.is_verified();
        for (before, e, after) in run(start, &events) {
            seen_verified |= before.is_verified();
            if seen_verified {
                prop_assert!(after.is_verified(), "{before} --{:?}--> {after}", e.kind());
            }
        }
    }

    /// Invariant 2: a node at level 2 or 3 never drops a level.
    #[test]
    fn levels_2_and_3_never_drop(start in status(), events in prop::collection::vec(event(), 0..64)) {
        for (before, e, after) in run(start, &events) {
            if before.level() >= Level::Auth {
                prop_assert!(after.level() >= before.level(), "{before} --{:?}--> {after}", e.kind());
            }
        }
    }

    /// Invariant 3: health events only move online <-> offline.
    #[test]
    fn health_only_toggles_online_offline(start in status(), events in prop::collection::vec(event(), 0..64)) {
        for (before, e, after) in run(start, &events) {
            if matches!(e, Event::HealthOk | Event::HealthFailed(_)) && before != after {
                let pair = (before, after);
                prop_assert!(
                    pair == (Status::Online, Status::Offline) || pair == (Status::Offline, Status::Online),
                    "health moved {before} -> {after}"
                );
            }
        }
    }

    /// Invariant 4: online is reachable only from level 3.
    #[test]
    fn online_only_from_level_3(start in status(), events in prop::collection::vec(event(), 0..64)) {
        for (before, e, after) in run(start, &events) {
            if after == Status::Online {
                prop_assert!(before.is_verified(), "{before} --{:?}--> online", e.kind());
            }
        }
    }

    /// Invariant 5: transition is total (never panics) and deterministic.
    #[test]
    fn total_and_deterministic(start in status(), e in event()) {
        let a = transition(start, &e);
        let b = transition(start, &e);
        prop_assert_eq!(a, b);
    }

    /// Our side's trouble is not evidence: an inconclusive event never lowers a
    /// level, never moves a node into `ping_failed` or `auth_failed`, and with
    /// nothing proven keeps the status exactly.
    #[test]
    fn inconclusive_never_demotes(start in status(), events in prop::collection::vec(event(), 0..64)) {
        for (before, e, after) in run(start, &events) {
            if let Event::Inconclusive { proven, .. } = &e {
                prop_assert!(after.level() >= before.level(), "{before} --inconclusive--> {after}");
                if after != before {
                    prop_assert!(
                        !matches!(after, Status::PingFailed | Status::AuthFailed),
                        "{before} --inconclusive--> {after}"
                    );
                }
                if *proven == Level::None {
                    prop_assert_eq!(after, before);
                }
            }
        }
    }

    /// Refusals change nothing and only happen for service starts below level 3.
    #[test]
    fn refusals_are_only_for_services_below_level_3(start in status(), e in event()) {
        if transition(start, &e).is_err() {
            prop_assert!(!start.is_verified());
            prop_assert!(matches!(e, Event::ServiceStarted(_) | Event::ServiceStartFailed(_)));
        }
    }
}
