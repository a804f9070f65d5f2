//! The light handshake as a sans-IO state machine: send a
//! Start-Control-Connection-Request, read the reply, then close politely with a
//! Stop-Control-Connection-Request. Time is an argument; the caller owns the socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    ControlMessage, EchoReply, Framer, StartControlConnectionReply, StartControlConnectionRequest,
    StopControlConnectionReply, StopControlConnectionRequest,
};
use crate::domain::Failure;

/// Settings of a [`LightHandshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// How long to wait for the Start-Control-Connection-Reply.
    pub handshake_timeout: Duration,
    /// How long to wait for the Stop-Control-Connection-Reply before closing anyway.
    pub stop_timeout: Duration,
    /// Host name sent in the request.
    pub host_name: String,
    /// Vendor sent in the request.
    pub vendor: String,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            handshake_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_millis(500),
            host_name: "connexa".into(),
            vendor: "connexa".into(),
        }
    }
}

/// How the handshake ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeResult {
    /// The server answered with result code 1.
    Established {
        /// The server's reply.
        reply: StartControlConnectionReply,
        /// Time from the request being queued to the reply being handled.
        rtt: Duration,
    },
    /// The handshake failed; the failure says how.
    Failed(Failure),
}

/// `now + d`, saturating at about a century instead of panicking on absurd settings.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitReply { sent_at: Instant, deadline: Instant },
    Stopping { deadline: Instant },
    Done,
}

/// A client's control-channel handshake, sans IO.
///
/// Drive it like this: write every [`poll_transmit`](Self::poll_transmit) to
/// the socket; feed bytes read to [`handle_input`](Self::handle_input), end of
/// stream to [`handle_eof`](Self::handle_eof), and call
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
/// passes; stop when [`is_done`](Self::is_done). [`result`](Self::result) is set
/// as soon as the outcome is known (before the polite stop completes).
///
/// ```
/// use std::time::{Duration, Instant};
/// use connexa_core::pptp::control::*;
///
/// let t0 = Instant::now();
/// let mut hs = LightHandshake::new(HandshakeConfig::default(), t0);
/// let request = hs.poll_transmit().unwrap();
/// assert!(matches!(ControlMessage::decode(&request),
///                  Ok(ControlMessage::StartControlConnectionRequest(_))));
/// let reply = ControlMessage::StartControlConnectionReply(
///     StartControlConnectionReply::success("local", "linux", 1)).encode();
/// hs.handle_input(&reply, t0 + Duration::from_millis(3));
/// assert!(matches!(hs.result(), Some(HandshakeResult::Established { .. })));
/// ```
#[derive(Debug)]
pub struct LightHandshake {
    config: HandshakeConfig,
    state: State,
    framer: Framer,
    transmit: VecDeque<Vec<u8>>,
    result: Option<HandshakeResult>,
}

impl LightHandshake {
    /// Starts the handshake at `now` (the connection is open): the request is
    /// queued for [`poll_transmit`](Self::poll_transmit).
    pub fn new(config: HandshakeConfig, now: Instant) -> Self {
        let request = ControlMessage::StartControlConnectionRequest(
            StartControlConnectionRequest::new(&config.host_name, &config.vendor),
        );
        let deadline = after(now, config.handshake_timeout);
        LightHandshake {
            config,
            state: State::AwaitReply {
                sent_at: now,
                deadline,
            },
            framer: Framer::new(),
            transmit: VecDeque::from([request.encode()]),
            result: None,
        }
    }

    /// The outcome, once known.
    pub fn result(&self) -> Option<&HandshakeResult> {
        self.result.as_ref()
    }

    /// Takes the outcome, once known.
    pub fn take_result(&mut self) -> Option<HandshakeResult> {
        self.result.take()
    }

    /// `true` when nothing is left to send or wait for: close the connection.
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.transmit.is_empty()
    }

    /// The next bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitReply { deadline, .. } | State::Stopping { deadline } => Some(deadline),
            State::Done => None,
        }
    }

    /// Time passed; expires the current wait if its deadline is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitReply { deadline, .. } if now >= deadline => {
                self.fail(Failure::HandshakeTimeout);
            }
            State::Stopping { deadline } if now >= deadline => self.state = State::Done,
            _ => {}
        }
    }

    /// The peer closed its side of the connection.
    pub fn handle_eof(&mut self, _now: Instant) {
        match self.state {
            State::AwaitReply { .. } => self.fail(Failure::ClosedEarly),
            State::Stopping { .. } => self.state = State::Done,
            State::Done => {}
        }
    }

    /// Bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.framer.push(bytes);
        loop {
            if self.state == State::Done {
                return;
            }
            let frame = match self.framer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(_) => {
                    self.protocol_error(Failure::NotPptp);
                    return;
                }
            };
            match ControlMessage::decode(&frame) {
                Ok(msg) => self.handle_message(msg, now),
                Err(e) if e.is_not_pptp() => self.protocol_error(Failure::NotPptp),
                Err(e) => self.protocol_error(Failure::BadReply {
                    detail: e.to_string(),
                }),
            }
        }
    }

    fn handle_message(&mut self, msg: ControlMessage, now: Instant) {
        match (self.state, msg) {
            (_, ControlMessage::EchoRequest(req)) => {
                self.queue(ControlMessage::EchoReply(EchoReply {
                    identifier: req.identifier,
                    result_code: 1,
                    error_code: 0,
                }));
            }
            (_, ControlMessage::StopControlConnectionRequest(_)) => {
                self.queue(ControlMessage::StopControlConnectionReply(
                    StopControlConnectionReply {
                        result_code: 1,
                        error_code: 0,
                    },
                ));
                if self.result.is_none() {
                    self.result = Some(HandshakeResult::Failed(Failure::BadReply {
                        detail:
                            "the server sent Stop-Control-Connection-Request instead of a reply"
                                .into(),
                    }));
                }
                self.state = State::Done;
            }
            (State::AwaitReply { sent_at, .. }, ControlMessage::StartControlConnectionReply(r)) => {
                if r.result_code == 1 {
                    self.result = Some(HandshakeResult::Established {
                        reply: r,
                        rtt: now.saturating_duration_since(sent_at),
                    });
                    self.queue(ControlMessage::StopControlConnectionRequest(
                        StopControlConnectionRequest { reason: 1 },
                    ));
                    self.state = State::Stopping {
                        deadline: after(now, self.config.stop_timeout),
                    };
                } else {
                    self.fail(Failure::ControlRejected {
                        code: r.result_code,
                    });
                }
            }
            (State::AwaitReply { .. }, other) => self.fail(Failure::BadReply {
                detail: format!(
                    "expected Start-Control-Connection-Reply, got {}",
                    other.control_type()
                ),
            }),
            (State::Stopping { .. }, ControlMessage::StopControlConnectionReply(_)) => {
                self.state = State::Done;
            }
            // Anything else while stopping is ignored: the result is already known.
            (State::Stopping { .. }, _) | (State::Done, _) => {}
        }
    }

    fn queue(&mut self, msg: ControlMessage) {
        self.transmit.push_back(msg.encode());
    }

    fn fail(&mut self, failure: Failure) {
        if self.result.is_none() {
            self.result = Some(HandshakeResult::Failed(failure));
        }
        self.state = State::Done;
    }

    /// A broken stream: fatal before the reply, ignored (closing) after it.
    fn protocol_error(&mut self, failure: Failure) {
        match self.state {
            State::AwaitReply { .. } => self.fail(failure),
            _ => self.state = State::Done,
        }
    }
}
