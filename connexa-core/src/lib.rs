//! # connexa-core
//!
//! The library behind Connexa, a toolkit for operators of PPTP VPN server fleets.
//!
//! * [`domain`]: the node model, the eight [`Status`](domain::Status) values and the
//!   pure [`transition`](domain::transition) function — the only way a status changes.
//! * [`ports`]: the traits the engine is generic over ([`NodeStore`](ports::NodeStore),
//!   [`Prober`](ports::Prober), [`SpeedTester`](ports::SpeedTester),
//!   [`ServiceLauncher`](ports::ServiceLauncher)).
//! * [`import`]: streaming parsers of every node-list format operators have, and
//!   the import report; [`export`]: writers of txt, csv, json, pptp and socks lists.
//! * [`pptp`]: sans-IO PPTP protocol parts (GRE, PPP/LCP, MS-CHAPv2, login driver,
//!   CCP/MPPE, IPCP, the session after login).
//! * [`tunnel`]: the raw GRE socket, the call driver and [`Tunnel`](tunnel::Tunnel):
//!   a live MPPE tunnel with a user-space TCP/IP stack; [`speed`]: the speed test
//!   through it.
//! * [`engine`]: batch jobs with progress derived from committed rows, the service
//!   reconciler and the health monitor, generic over the ports.
//! * [`socks`]: the SOCKS5 [`SocksLauncher`](socks::SocksLauncher) and its sans-IO
//!   protocol; [`service`]: what a service needs from a node's tunnel
//!   ([`TunnelOpener`](service::TunnelOpener), [`TunnelLink`](service::TunnelLink))
//!   and [`KindLauncher`](service::KindLauncher), which starts each node's
//!   service by its wanted kind; [`tun`]: the node's tunnel as a kernel TUN
//!   interface ([`TunLauncher`](tun::TunLauncher)).
//! * [`ops`]: the operations frontends call (one per CLI subcommand) and their
//!   JSON views; [`config`]: the operator's TOML configuration file.
//! * [`metrics`]: probe latency histograms ([`ProbeStats`](metrics::ProbeStats),
//!   filled by the [`Instrumented`](metrics::Instrumented) prober and speed
//!   tester) in the Prometheus text format.
//!
//! The central promise: a node that passed the speed test is never demoted.
//!
//! ```
//! use connexa_core::domain::{transition, Event, Status};
//!
//! // A service that fails to start leaves a verified node verified.
//! let after = transition(Status::SpeedOk, &Event::ServiceStartFailed("port busy".into()));
//! assert_eq!(after, Ok(Status::SpeedOk));
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod doctor;
pub mod domain;
pub mod engine;
pub mod export;
pub mod geo;
pub mod import;
pub mod metrics;
pub mod ops;
pub mod ports;
pub mod pptp;
pub mod probe;
pub mod runtime;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod socks;
pub mod speed;
pub mod store;
pub mod tun;
pub mod tunnel;
