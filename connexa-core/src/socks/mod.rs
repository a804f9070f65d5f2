//! SOCKS5 services: the [`ServiceLauncher`](crate::ports::ServiceLauncher) that
//! serves SOCKS5 (RFC 1928 CONNECT to IPv4, IPv6 and domain targets; RFC 1929
//! username/password required) through a node's tunnel.
//!
//! * [`proto`]: the wire format and the server negotiation as a sans-IO state
//!   machine (bounded, never panics, proptested against garbage).
//! * [`SocksLauncher`]: one listener per service on a configured address and a
//!   port from a configured range (kept across restarts), generated
//!   credentials, connections opened through the node's
//!   [`TunnelLink`](crate::service::TunnelLink), names resolved through the
//!   tunnel by default, bytes relayed untouched with an idle timeout and a
//!   per-service limit of logged-in connections; connections that have not
//!   logged in yet hold separate pre-auth slots (bounded per source and in
//!   total, older ones evicted for newcomers, a short login deadline), so
//!   unauthenticated sockets cannot lock clients out (see [`ServerOptions`]).
//!
//! ```no_run
//! # async fn demo(node: connexa_core::domain::Node) -> Result<(), connexa_core::ports::ServiceError> {
//! use std::sync::Arc;
//! use connexa_core::ports::ServiceLauncher;
//! use connexa_core::service::DirectOpener;
//! use connexa_core::socks::{SocksConfig, SocksLauncher};
//!
//! let launcher = SocksLauncher::new(Arc::new(DirectOpener::loopback_only()), SocksConfig::default());
//! let ep = launcher.start(&node, None).await?;
//! println!("socks5://{}:***@{}:{}", ep.username, ep.host, ep.port);
//! launcher.stop(node.id).await?;
//! # Ok(()) }
//! ```

pub mod client;
mod launcher;
mod preauth;
pub mod proto;
mod server;

pub use launcher::{SocksConfig, SocksLauncher};
pub use server::{DnsMode, ServerOptions, ServiceStats};
