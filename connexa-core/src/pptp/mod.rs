//! PPTP wire codecs and sans-IO state machines (RFC 2637). No sockets here: the
//! drivers in [`probe`](crate::probe) (and later `tunnel`) move the bytes.

pub mod control;
