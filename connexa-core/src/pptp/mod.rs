//! PPTP wire codecs and sans-IO state machines (no sockets here; `tunnel` drives them).
//!
//! * [`control`]: the control-channel messages, framing and the light handshake (RFC 2637).
//! * [`gre`]: Enhanced GRE (RFC 2637 §4.1) and raw IPv4/GRE datagrams.
//! * [`ppp`]: PPP framing over PPTP, the generic RFC 1661 automaton and LCP.
//! * [`mschapv2`]: MS-CHAPv2 (RFC 2759) crypto, packets and the client/authenticator
//!   state machines.
//! * [`mppe`]: the MPPE key schedule of RFC 3079 / RFC 3078 §7.3.
//! * [`login`]: the sans-IO login driver (LCP → MS-CHAPv2 → result) and its
//!   server-side counterpart used by tests and the simulator.
//!
//! Every state machine follows the quinn-proto/str0m style: `handle_input(bytes, now)`,
//! `poll_transmit()`, `poll_timeout()`, `handle_timeout(now)`; time is an argument.

pub mod control;
mod entropy;
pub mod gre;
pub mod login;
pub mod mppe;
pub mod mschapv2;
pub mod ppp;
pub mod session;
