//! The one `unsafe` call of the tunnel: registering the raw socket with tokio.
#![allow(unsafe_code)]

use std::io;

use socket2::Socket;
use tokio::io::unix::AsyncFd;

/// Registers `socket` with the current tokio reactor.
pub(crate) fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `AsyncFd::register` requires that the value owns a valid file
    // descriptor which is neither closed nor replaced while the `AsyncFd` owns
    // it. `socket2::Socket` owns its descriptor (an `OwnedFd`) and closes it
    // only when dropped, which happens after `AsyncFd` deregisters it; nothing
    // in this crate calls anything that closes or `dup2`s over it.
    Ok(unsafe { AsyncFd::register(socket) }?)
}
