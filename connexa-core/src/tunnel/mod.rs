//! The I/O half of the auth test: one raw GRE socket per process and the driver
//! of a PPTP call from TCP connect to polite teardown.
//!
//! * [`GreSocket`]: the raw `IPPROTO_GRE` socket (needs `CAP_NET_RAW`), read by
//!   one background task that demultiplexes inbound packets by `(peer address,
//!   our call id)` to the live tunnels ([`GreRoute`]); anything else is dropped.
//! * [`login`]: control connection (SCCRQ/SCCRP), Outgoing-Call-Request/Reply,
//!   LCP + MS-CHAPv2 over GRE with [`LoginClient`](crate::pptp::login::LoginClient),
//!   then LCP Terminate, Call-Clear-Request and Stop-Control-Connection-Request,
//!   also after a failure or timeout. It returns a [`LoginReport`].
//!
//! **One socket per process.** A raw socket receives every GRE datagram of its
//! network namespace, so two `GreSocket`s in one process would both see all
//! traffic and could hand out the same call id to different tunnels. Open one
//! and share it: [`SharedGre`] is the handle [`NetworkPorts`](crate::runtime::NetworkPorts)
//! owns and hands to the prober, the speed tester and the service opener;
//! a server side in the same process (the loopback example, a simulator)
//! registers its calls on the same socket, and the demultiplexer keeps them
//! apart by call id. The socket belongs to the network namespace of the thread
//! that opened it, and its reader task to that thread's tokio runtime.
//!
//! Nothing here needs `/dev/ppp` or pppd: LCP and MS-CHAPv2 run in user space.
//! IPv6 nodes are refused with [`ProbeError::Config`](crate::ports::ProbeError).
//!
//! The probe layer ([`LightProber`](crate::probe::LightProber) at
//! [`ProbeDepth::Auth`](crate::ports::ProbeDepth::Auth)) turns the report into an
//! [`Outcome`](crate::domain::Outcome).
//!
//! ```no_run
//! # async fn demo() -> Result<(), connexa_core::ports::ProbeError> {
//! use connexa_core::domain::Secret;
//! use connexa_core::tunnel::{AuthConfig, GreSocket, login};
//! let gre = GreSocket::open()?; // Err(NotPermitted) without CAP_NET_RAW
//! let report = login(&gre, "127.0.0.1:1723".parse().unwrap(), "alice",
//!                    &Secret::new("s3cret"), &AuthConfig::default()).await;
//! println!("{:?} {:?}", report.reached, report.failure);
//! # Ok(()) }
//! ```

mod call;
mod device;
mod fd;
mod retry;
mod socket;
mod stack;

pub(crate) use call::ipv4_only;
pub use call::{AuthConfig, LoginReport, Teardown, login};
pub use device::PacketQueues;
#[cfg(feature = "sim")]
pub(crate) use fd::register as register_async_fd;
pub(crate) use retry::retrying;
pub use socket::{GreRoute, GreSocket, GreStats, NEED_CAP_NET_RAW, RouteKey, SharedGre};
pub use stack::{
    PacketError, PacketPath, Tunnel, TunnelConfig, TunnelError, TunnelStats, TunnelStream,
    TunnelUdp,
};
