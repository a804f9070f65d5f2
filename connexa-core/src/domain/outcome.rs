//! What a test found out: [`Outcome`], [`Failure`], [`Measurements`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Level, PptpIdentity};

/// Numbers a test measured. Every field is optional: a test fills what it saw.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Measurements {
    /// ICMP round-trip time (or handshake time when ICMP is unavailable), ms.
    pub ping_ms: Option<f64>,
    /// TCP connect time to the control port, ms.
    pub connect_ms: Option<f64>,
    /// Start-Control-Connection request→reply time, ms.
    pub handshake_ms: Option<f64>,
    /// Download goodput through the tunnel, Mbit/s.
    pub speed_down_mbps: Option<f64>,
    /// Upload goodput through the tunnel, Mbit/s.
    pub speed_up_mbps: Option<f64>,
    /// Bytes moved during a speed test (both directions, warm-up excluded).
    pub bytes_moved: Option<u64>,
    /// What the server said about itself.
    pub pptp: Option<PptpIdentity>,
    /// The node's exit address: the client address the keyed speed endpoint
    /// saw for the tunnel's connections (its `X-Connexa-Client-Addr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_ip: Option<std::net::IpAddr>,
}

/// Why a test stopped below the level it aimed for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failure {
    /// The TCP connection was refused.
    Refused,
    /// The TCP connection did not complete in time.
    ConnectTimeout,
    /// The peer reset the connection.
    Reset,
    /// The peer closed the connection before answering.
    ClosedEarly,
    /// Something answered, but not PPTP (wrong magic cookie or framing).
    NotPptp,
    /// A PPTP reply that breaks the protocol.
    BadReply {
        /// What was wrong.
        detail: String,
    },
    /// The control-channel handshake did not complete in time.
    HandshakeTimeout,
    /// The server answered the handshake with a non-success result code.
    ControlRejected {
        /// RFC 2637 result code (2..=5).
        code: u8,
    },
    /// The Outgoing-Call-Request was rejected.
    CallRejected {
        /// RFC 2637 result code.
        code: u8,
    },
    /// PPP link negotiation (LCP) failed or never answered.
    LcpFailed {
        /// What happened.
        detail: String,
    },
    /// The server rejected the credentials (MS-CHAPv2 Failure).
    AuthRejected {
        /// The `E=` error code (691 = authentication failure), if given.
        code: Option<u32>,
        /// The server's message, if any.
        message: String,
    },
    /// Authentication did not complete in time.
    AuthTimeout,
    /// The tunnel (CCP/MPPE, IPCP, GRE) could not be brought up.
    TunnelFailed {
        /// What happened.
        detail: String,
    },
    /// The tunnel worked but throughput was below the threshold.
    TooSlow {
        /// Measured download, Mbit/s.
        down_mbps: f64,
        /// The configured threshold, Mbit/s.
        threshold_mbps: f64,
    },
    /// The speed test endpoint's body, as received through the tunnel, was not
    /// the keyed stream it must be: the node (or something on its path)
    /// answered with content of its own. The login worked, so this is level 2
    /// (`ping_ok`), never `speed_ok`.
    ContentMismatch {
        /// What differed, e.g. the offset of the first wrong byte.
        detail: String,
    },
    /// The whole per-node test exceeded its time budget. Found only in history
    /// rows written before an exceeded budget became an inconclusive event
    /// (our budget is not evidence about the node); no longer produced.
    Timeout,
    /// The test code itself crashed; the node is not to blame.
    Crashed {
        /// The panic message.
        detail: String,
    },
    /// Anything else.
    Other {
        /// What happened.
        detail: String,
    },
}

impl Failure {
    /// `true` for transport failures before the server answered the control
    /// handshake (refused, connect timeout, reset, closed early, handshake
    /// timeout): worth another try after a short pause, because a busy or
    /// restarting server (pptpd drops a new connection while it reaps a
    /// child, for one) looks like this for a moment.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Failure::Refused
                | Failure::ConnectTimeout
                | Failure::Reset
                | Failure::ClosedEarly
                | Failure::HandshakeTimeout
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::ConnectTimeout => f.write_str("connect timed out"),
            Failure::Reset => f.write_str("connection reset by peer"),
            Failure::ClosedEarly => f.write_str("connection closed before a reply"),
            Failure::NotPptp => f.write_str("the server did not answer PPTP"),
            Failure::BadReply { detail } => write!(f, "bad PPTP reply: {detail}"),
            Failure::HandshakeTimeout => f.write_str("PPTP handshake timed out"),
            Failure::ControlRejected { code } => write!(
                f,
                "PPTP control connection rejected: result {code} ({})",
                control_result_meaning(*code)
            ),
            Failure::CallRejected { code } => write!(f, "PPTP call rejected: result {code}"),
            Failure::LcpFailed { detail } => write!(f, "PPP link negotiation failed: {detail}"),
            Failure::AuthRejected { code, message } => match code {
                Some(c) => write!(f, "credentials rejected (E={c}) {message}"),
                None => write!(f, "credentials rejected {message}"),
            },
            Failure::AuthTimeout => f.write_str("authentication timed out"),
            Failure::TunnelFailed { detail } => write!(f, "tunnel failed: {detail}"),
            Failure::TooSlow {
                down_mbps,
                threshold_mbps,
            } => write!(
                f,
                "too slow: {down_mbps:.2} Mbit/s down, threshold {threshold_mbps:.2}"
            ),
            Failure::ContentMismatch { detail } => {
                write!(
                    f,
                    "speed test content mismatch (the node answered with its own bytes): {detail}"
                )
            }
            Failure::Timeout => f.write_str("test timed out"),
            Failure::Crashed { detail } => write!(f, "test crashed: {detail}"),
            Failure::Other { detail } => f.write_str(detail),
        }
    }
}

/// The RFC 2637 meaning of a Start-Control-Connection-Reply result code.
pub fn control_result_meaning(code: u8) -> &'static str {
    match code {
        1 => "successful channel establishment",
        2 => "general error",
        3 => "command channel already exists",
        4 => "requester is not authorized to establish a command channel",
        5 => "the protocol version of the requester is not supported",
        _ => "unknown result code",
    }
}

/// The result of one test of one node: how far it got, why it stopped, what it measured.
///
/// ```
/// use connexa_core::domain::{Failure, Level, Outcome};
/// let slow = Outcome::failed(Level::Auth, Failure::TooSlow { down_mbps: 0.2, threshold_mbps: 1.0 });
/// assert_eq!(slow.reached, Level::Auth); // logged in, so it is `ping_ok`, not `ping_failed`
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The highest level of evidence achieved.
    pub reached: Level,
    /// Why the test stopped there, if it aimed higher.
    pub failure: Option<Failure>,
    /// What was measured on the way.
    pub measurements: Measurements,
}

impl Outcome {
    /// A test that achieved `level` and did not fail.
    pub fn success(level: Level) -> Self {
        Outcome {
            reached: level,
            failure: None,
            measurements: Measurements::default(),
        }
    }

    /// A test that achieved `level`, then failed with `failure`.
    pub fn failed(level: Level, failure: Failure) -> Self {
        Outcome {
            reached: level,
            failure: Some(failure),
            measurements: Measurements::default(),
        }
    }

    /// Attaches measurements.
    pub fn with_measurements(mut self, measurements: Measurements) -> Self {
        self.measurements = measurements;
        self
    }

    /// `true` when the PPTP server answered but rejected the credentials.
    pub fn is_auth_rejected(&self) -> bool {
        self.reached == Level::Light && matches!(self.failure, Some(Failure::AuthRejected { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_before_an_answer_are_transient() {
        let transient = [
            Failure::Refused,
            Failure::ConnectTimeout,
            Failure::Reset,
            Failure::ClosedEarly,
            Failure::HandshakeTimeout,
        ];
        for f in transient {
            assert!(f.is_transient(), "{f}");
        }
        let lasting = [
            Failure::NotPptp,
            Failure::ControlRejected { code: 2 },
            Failure::AuthRejected {
                code: Some(691),
                message: "bad".into(),
            },
            Failure::AuthTimeout,
            Failure::Timeout,
        ];
        for f in lasting {
            assert!(!f.is_transient(), "{f}");
        }
    }

    #[test]
    fn control_results_read_as_rfc_2637_says() {
        assert_eq!(
            control_result_meaning(1),
            "successful channel establishment"
        );
        assert_eq!(control_result_meaning(2), "general error");
        assert_eq!(control_result_meaning(3), "command channel already exists");
        assert!(control_result_meaning(4).contains("not authorized"));
        assert!(control_result_meaning(5).contains("protocol version"));
        assert_eq!(control_result_meaning(0), "unknown result code");
        assert_eq!(
            Failure::ControlRejected { code: 4 }.to_string(),
            "PPTP control connection rejected: result 4 (requester is not authorized to establish a command channel)"
        );
    }

    #[test]
    fn an_auth_rejection_is_a_light_outcome_with_that_failure() {
        let rejected = Failure::AuthRejected {
            code: Some(691),
            message: "E=691".into(),
        };
        assert!(Outcome::failed(Level::Light, rejected.clone()).is_auth_rejected());
        assert!(!Outcome::failed(Level::Light, Failure::AuthTimeout).is_auth_rejected());
        assert!(!Outcome::failed(Level::Auth, rejected).is_auth_rejected());
        assert!(!Outcome::success(Level::Light).is_auth_rejected());
        let m = Measurements {
            ping_ms: Some(12.5),
            ..Measurements::default()
        };
        let o = Outcome::success(Level::Speed).with_measurements(m.clone());
        assert_eq!(
            (o.reached, o.failure, o.measurements),
            (Level::Speed, None, m)
        );
    }
}
