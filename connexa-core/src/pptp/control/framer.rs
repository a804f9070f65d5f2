//! Cutting a TCP byte stream into control messages.

use super::{CONTROL_MESSAGE, HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN};

/// Why a byte stream is not a PPTP control stream. Each is detected as soon as
/// the bytes that show it have arrived, so garbage is rejected without waiting
/// for more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is shorter than a header or longer than any PPTP message.
    #[error("absurd control message length {0}")]
    AbsurdLength(u16),
    /// The PPTP Message Type is not 1.
    #[error("PPTP message type {0} is not a control message")]
    BadMessageType(u16),
    /// The magic cookie is not 0x1A2B3C4D.
    #[error("bad magic cookie {0:#010x}")]
    BadMagicCookie(u32),
}

/// Buffers bytes from a control connection and hands out complete messages
/// (length-prefixed, [`MAX_MESSAGE_LEN`] at most).
///
/// ```
/// use connexa_core::pptp::control::{ControlMessage, EchoRequest, Framer};
/// let bytes = ControlMessage::EchoRequest(EchoRequest { identifier: 7 }).encode();
/// let mut framer = Framer::new();
/// framer.push(&bytes[..5]);
/// assert_eq!(framer.next_frame(), Ok(None)); // not complete yet
/// framer.push(&bytes[5..]);
/// assert_eq!(framer.next_frame(), Ok(Some(bytes.clone())));
/// ```
#[derive(Debug, Default, Clone)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// An empty framer.
    pub fn new() -> Self {
        Framer::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks what has arrived of the next message's header without consuming it.
    pub fn check_prefix(&self) -> Result<(), FrameError> {
        let b = &self.buf;
        if let Some(len) = b.get(0..2) {
            let len = u16::from_be_bytes([len[0], len[1]]);
            if usize::from(len) < HEADER_LEN || usize::from(len) > MAX_MESSAGE_LEN {
                return Err(FrameError::AbsurdLength(len));
            }
        }
        if let Some(t) = b.get(2..4) {
            let t = u16::from_be_bytes([t[0], t[1]]);
            if t != CONTROL_MESSAGE {
                return Err(FrameError::BadMessageType(t));
            }
        }
        if let Some(c) = b.get(4..8) {
            let c = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            if c != MAGIC_COOKIE {
                return Err(FrameError::BadMagicCookie(c));
            }
        }
        Ok(())
    }

    /// The next complete message (header included), `Ok(None)` if more bytes are
    /// needed, or an error once the stream shows it is not PPTP. After an error
    /// the framer keeps returning it.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.check_prefix()?;
        let Some(len) = self.buf.get(0..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}
