//! # connexa-core
//!
//! The library behind Connexa, a toolkit for operators of PPTP VPN server fleets.
//!
//! ## What an embedder needs, at the crate root
//!
//! | Re-export | What it is |
//! |---|---|
//! | [`Engine`], [`EngineConfig`], [`EngineError`], [`JobOptions`] | Jobs, the service reconciler and the health monitor. |
//! | [`NetworkPorts`] | The prober, speed tester and SOCKS5 launcher built from a [`Config`], sharing one GRE socket. |
//! | [`SqlStore`] | The SQLite/PostgreSQL store (the only writer of a node's status). |
//! | [`Config`] | The operator's TOML configuration file. |
//! | [`transition`](fn@transition) (function and [module](mod@transition)), [`Status`], [`Level`], [`Event`], [`EventKind`], [`Outcome`], [`Refused`] | The status model: the one function that changes a status, and [`transition::allows`]. |
//! | [`Node`], [`NodeId`], [`NewNode`], [`Location`], [`Secret`] | Nodes and their fields. |
//! | [`NodeFilter`], [`Page`], [`Selection`] | Which nodes: filters, pages, and the ids-or-filter-or-all selection frontends validate. |
//! | [`JobKind`], [`JobId`], [`JobState`], [`Job`], [`Progress`] | The job model. |
//! | [`NodeStore`], [`Prober`], [`SpeedTester`], [`ServiceLauncher`] | The ports the engine is generic over (bring your own). |
//!
//! ## Modules
//!
//! Each module may use only the modules below it; the map with every layer
//! is in `docs/architecture.md` ("Module map and layers"), checked by
//! `tests/layers.rs`.
//!
//! * [`domain`]: the node model, the eight [`Status`] values, the pure
//!   [`transition`](fn@transition) function — the only way a status changes —
//!   and the job model.
//! * [`ports`]: the traits the engine is generic over ([`NodeStore`],
//!   [`Prober`], [`SpeedTester`], [`ServiceLauncher`]) and the cursor walk over
//!   a store ([`NodeWalk`](ports::NodeWalk)).
//! * [`pptp`]: **protocol internals** — the sans-IO PPTP parts (GRE, PPP/LCP,
//!   MS-CHAPv2, login driver, CCP/MPPE, IPCP, the session after login). Public
//!   for those who want to drive the protocol themselves (tests, simulators,
//!   other transports); an embedder testing fleets never needs them.
//! * [`import`]: streaming parsers of every node-list format operators have, and
//!   the import report; [`export`]: writers of txt, csv, json, pptp and socks lists.
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
//!   interface ([`TunLauncher`](tun::TunLauncher)); [`openvpn`]: an OpenVPN
//!   server per service whose clients' traffic leaves through the node
//!   ([`OpenvpnLauncher`](openvpn::OpenvpnLauncher)) and its `.ovpn` profiles.
//! * [`ops`]: the operations frontends call (one per CLI subcommand) and their
//!   JSON views; [`config`]: the operator's TOML configuration file;
//!   [`runtime`]: the ports and engine built from it; [`doctor`]: checks of a
//!   deployment.
//! * [`metrics`]: probe latency histograms ([`ProbeStats`](metrics::ProbeStats),
//!   filled by the [`Instrumented`](metrics::Instrumented) prober and speed
//!   tester) in the Prometheus text format.
//!
//! The central promise: a node that passed the speed test is never demoted.
//!
//! ```
//! use connexa_core::{transition, Event, Status};
//!
//! // A service that fails to start leaves a verified node verified.
//! let after = transition(Status::SpeedOk, &Event::ServiceStartFailed("port busy".into()));
//! assert_eq!(after, Ok(Status::SpeedOk));
//! ```
#![warn(missing_docs)]

pub mod config;
mod csv_cell;
pub mod doctor;
pub mod domain;
pub mod engine;
pub mod export;
pub mod geo;
pub mod import;
pub mod metrics;
pub mod openvpn;
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

pub use config::Config;
pub use domain::{
    Event, EventKind, Job, JobId, JobKind, JobState, Level, Location, NewNode, Node, NodeFilter,
    NodeId, Outcome, Page, Progress, Refused, Secret, Selection, Status, transition,
};
pub use engine::{Engine, EngineConfig, EngineError, JobOptions, JobOptionsError};
pub use ports::{NodeStore, Prober, ServiceLauncher, SpeedTester};
pub use runtime::NetworkPorts;
pub use store::SqlStore;
