//! Events, the one function that changes a status ([`transition`]), and the
//! question asked before doing work that ends in an event ([`allows`]).

use std::fmt;

use super::{Level, Measurements, Outcome, ServiceEndpoint, Status};

/// Something that happened to a node. Events carry their evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A light, auth, speed or pipeline test finished.
    Tested(Outcome),
    /// A SOCKS5 service started through the node.
    ServiceStarted(ServiceEndpoint),
    /// A service could not be started (the reason is recorded as `last_error`).
    ServiceStartFailed(String),
    /// The service was stopped on request.
    ServiceStopped,
    /// The service's health check passed.
    HealthOk,
    /// The service's health check failed (after the monitor's threshold).
    HealthFailed(String),
    /// A test stopped for a reason on *our* side (the per-node budget ran out,
    /// the job deadline passed): not evidence about the node. It keeps the
    /// status, except that a level the test had already `proven` (a pipeline
    /// whose light stage passed before the budget ran out in auth) counts like
    /// a successful test of that level. It never counts as a node failure.
    Inconclusive {
        /// Why, in words ("budget exceeded after 20 s at stage auth").
        reason: String,
        /// The level the test had proven before it stopped ([`Level::None`]:
        /// nothing).
        proven: Level,
        /// What was measured up to there.
        measurements: Measurements,
    },
}

/// The kind of an [`Event`], without its data: what `status_history` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// [`Event::Tested`].
    Tested,
    /// [`Event::ServiceStarted`].
    ServiceStarted,
    /// [`Event::ServiceStartFailed`].
    ServiceStartFailed,
    /// [`Event::ServiceStopped`].
    ServiceStopped,
    /// [`Event::HealthOk`].
    HealthOk,
    /// [`Event::HealthFailed`].
    HealthFailed,
    /// [`Event::Inconclusive`].
    Inconclusive,
}

impl EventKind {
    /// Every kind, in table order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Tested,
        EventKind::ServiceStarted,
        EventKind::ServiceStartFailed,
        EventKind::ServiceStopped,
        EventKind::HealthOk,
        EventKind::HealthFailed,
        EventKind::Inconclusive,
    ];
}

impl EventKind {
    /// The stored snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Tested => "tested",
            EventKind::ServiceStarted => "service_started",
            EventKind::ServiceStartFailed => "service_start_failed",
            EventKind::ServiceStopped => "service_stopped",
            EventKind::HealthOk => "health_ok",
            EventKind::HealthFailed => "health_failed",
            EventKind::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Tested(_) => EventKind::Tested,
            Event::ServiceStarted(_) => EventKind::ServiceStarted,
            Event::ServiceStartFailed(_) => EventKind::ServiceStartFailed,
            Event::ServiceStopped => EventKind::ServiceStopped,
            Event::HealthOk => EventKind::HealthOk,
            Event::HealthFailed(_) => EventKind::HealthFailed,
            Event::Inconclusive { .. } => EventKind::Inconclusive,
        }
    }
}

/// A transition the table forbids. Nothing is written; the caller is told why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Services run only through nodes that passed the speed test.
    #[error(
        "cannot {what} on a node that is {current} (level {level}): services need a node that passed the speed test; run `connexa test {next}` first",
        level = current.level().as_u8()
    )]
    ServiceNeedsVerifiedNode {
        /// The node's status.
        current: Status,
        /// The event's kind.
        event: EventKind,
        /// A human phrase for the event ("start a service").
        what: &'static str,
        /// The test to run next (`pipeline` or `speed`).
        next: &'static str,
    },
}

/// Computes a node's next status. Pure, total and deterministic: the whole table
/// of `docs/architecture.md`, and the only place a status is decided.
///
/// Guarantees (proved by property tests):
/// 1. a node at level 3 (`speed_ok`, `online`, `offline`) never leaves level 3;
/// 2. a node at level 2 or 3 never drops a level;
/// 3. health events only move `online` ↔ `offline`;
/// 4. `online` is reachable only from level 3;
/// 5. [`Event::Inconclusive`] never lowers a level and never moves a node
///    into `ping_failed` or `auth_failed`.
///
/// ```
/// use connexa_core::domain::{transition, Event, Failure, Level, Outcome, Status};
/// let ok = transition(Status::NotTested, &Event::Tested(Outcome::success(Level::Light)));
/// assert_eq!(ok, Ok(Status::PingLight));
/// // A failed re-test never demotes a verified node.
/// let dead = Event::Tested(Outcome::failed(Level::None, Failure::Refused));
/// assert_eq!(transition(Status::Online, &dead), Ok(Status::Online));
/// // Starting a service on an untested node is refused.
/// assert!(transition(Status::NotTested, &Event::ServiceStartFailed("x".into())).is_err());
/// // Our budget running out is not evidence: the node keeps its status.
/// let overrun = Event::Inconclusive {
///     reason: "budget exceeded after 2 s at stage auth".into(),
///     proven: Level::None,
///     measurements: Default::default(),
/// };
/// assert_eq!(transition(Status::PingLight, &overrun), Ok(Status::PingLight));
/// ```
pub fn transition(current: Status, event: &Event) -> Result<Status, Refused> {
    use Status::*;
    allows(current, event.kind())?;
    match event {
        Event::Tested(outcome) => Ok(after_test(current, outcome)),
        Event::ServiceStarted(_) => Ok(Online),
        Event::ServiceStartFailed(_) => Ok(current),
        Event::ServiceStopped => Ok(match current {
            Online | Offline => SpeedOk,
            other => other,
        }),
        Event::HealthOk => Ok(match current {
            Offline => Online,
            other => other,
        }),
        Event::HealthFailed(_) => Ok(match current {
            Online => Offline,
            other => other,
        }),
        Event::Inconclusive { proven, .. } => Ok(match proven {
            Level::None => current,
            // What was proven counts as a passed test of that level.
            level => after_test(current, &Outcome::success(*level)),
        }),
    }
}

/// May an event of this kind apply to a node with this status? `Ok(())`
/// exactly when [`transition`] accepts such an event, and the same [`Refused`]
/// it would answer otherwise. Lets a caller ask before doing the work (starting
/// a service) without building an event.
///
/// ```
/// use connexa_core::domain::{transition::allows, EventKind, Status};
/// assert!(allows(Status::SpeedOk, EventKind::ServiceStarted).is_ok());
/// let refused = allows(Status::PingOk, EventKind::ServiceStarted).unwrap_err();
/// assert!(refused.to_string().contains("run `connexa test speed` first"));
/// // Tests and health events apply to every status.
/// assert!(allows(Status::NotTested, EventKind::Tested).is_ok());
/// ```
pub fn allows(current: Status, kind: EventKind) -> Result<(), Refused> {
    let what = match kind {
        EventKind::ServiceStarted => "mark a service started",
        EventKind::ServiceStartFailed => "record a failed service start",
        EventKind::Tested
        | EventKind::ServiceStopped
        | EventKind::HealthOk
        | EventKind::HealthFailed
        | EventKind::Inconclusive => return Ok(()),
    };
    if current.is_verified() {
        return Ok(());
    }
    Err(Refused::ServiceNeedsVerifiedNode {
        current,
        event: kind,
        what,
        next: if current == Status::PingOk {
            "speed"
        } else {
            "pipeline"
        },
    })
}

/// The status a test result alone points to, before the current status is considered.
fn evidence(outcome: &Outcome) -> Status {
    match outcome.reached {
        Level::None => Status::PingFailed,
        Level::Light if outcome.is_auth_rejected() => Status::AuthFailed,
        Level::Light => Status::PingLight,
        Level::Auth => Status::PingOk,
        Level::Speed => Status::SpeedOk,
    }
}

fn after_test(current: Status, outcome: &Outcome) -> Status {
    let seen = evidence(outcome);
    match current.level() {
        // Verified nodes keep their status; the failure is recorded, not applied.
        Level::Speed => current,
        // Logged-in nodes only move up.
        Level::Auth if seen == Status::SpeedOk => seen,
        Level::Auth => current,
        // A node whose credentials were rejected stays `auth_failed` when a light
        // test merely sees the server again.
        Level::Light if current == Status::AuthFailed && seen == Status::PingLight => current,
        Level::None | Level::Light => seen,
    }
}
