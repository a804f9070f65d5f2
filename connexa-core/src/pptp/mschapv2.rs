//! MS-CHAPv2 (RFC 2759): the hash and response functions of §8, the CHAP packet
//! codec of §3-§6, and two sans-IO state machines: [`MsChapClient`] (the peer that
//! logs in) and [`MsChapAuthenticator`] (the server side, for tests and the
//! simulator).
//!
//! The functions are checked byte for byte against the worked example of
//! RFC 2759 §9.2:
//!
//! ```
//! use connexa_core::pptp::mschapv2::*;
//!
//! let auth = [0x5B, 0x5D, 0x7C, 0x7D, 0x7B, 0x3F, 0x2F, 0x3E, 0x3C, 0x2C, 0x60, 0x21, 0x32, 0x26, 0x26, 0x28];
//! let peer = [0x21, 0x40, 0x23, 0x24, 0x25, 0x5E, 0x26, 0x2A, 0x28, 0x29, 0x5F, 0x2B, 0x3A, 0x33, 0x7C, 0x7E];
//! let nt = generate_nt_response(&auth, &peer, "User", "clientPass");
//! let s = generate_authenticator_response("clientPass", &nt, &peer, &auth, "User");
//! assert_eq!(s, "S=407A5589115FD0D6209F510FE9C04566932CDA56");
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use des::Des;
use des::cipher::{BlockCipherEncrypt, KeyInit};
use md4::Md4;
use sha1::{Digest, Sha1};

use super::entropy::Entropy;
use super::ppp::PppError;
use crate::domain::Secret;

/// CHAP code: Challenge.
pub const CHAP_CHALLENGE: u8 = 1;
/// CHAP code: Response.
pub const CHAP_RESPONSE: u8 = 2;
/// CHAP code: Success.
pub const CHAP_SUCCESS: u8 = 3;
/// CHAP code: Failure.
pub const CHAP_FAILURE: u8 = 4;

/// `E=691`: authentication failure (bad user name or password).
pub const ERROR_AUTHENTICATION_FAILURE: u32 = 691;

// ---------------------------------------------------------------------------
// RFC 2759 §8: the functions
// ---------------------------------------------------------------------------

/// The user name as hashed: any `DOMAIN\` prefix removed (RFC 2759 §8.2).
fn bare_username(username: &str) -> &str {
    username
        .rsplit_once('\\')
        .map_or(username, |(_, user)| user)
}

/// ChallengeHash (RFC 2759 §8.2): the first 8 octets of
/// SHA1(PeerChallenge | AuthenticatorChallenge | UserName).
pub fn challenge_hash(
    peer_challenge: &[u8; 16],
    auth_challenge: &[u8; 16],
    username: &str,
) -> [u8; 8] {
    let mut h = Sha1::new();
    h.update(peer_challenge);
    h.update(auth_challenge);
    h.update(bare_username(username).as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// NtPasswordHash (RFC 2759 §8.3): MD4 of the UTF-16LE password.
pub fn nt_password_hash(password: &str) -> [u8; 16] {
    let mut h = Md4::new();
    for unit in password.encode_utf16() {
        h.update(unit.to_le_bytes());
    }
    h.finalize().into()
}

/// HashNtPasswordHash (RFC 2759 §8.4): MD4 of the password hash.
pub fn hash_nt_password_hash(password_hash: &[u8; 16]) -> [u8; 16] {
    Md4::digest(password_hash).into()
}

/// Spreads 7 key octets over 8, leaving the low (parity) bit of each zero; DES
/// ignores parity (RFC 2759 §8.6).
fn des_key_from_7(k: &[u8; 7]) -> [u8; 8] {
    let v = k.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (((v >> (49 - 7 * i)) & 0x7F) as u8) << 1;
    }
    out
}

/// DesEncrypt (RFC 2759 §8.6): one DES block with a 7-octet key.
pub fn des_encrypt(clear: &[u8; 8], key7: &[u8; 7]) -> [u8; 8] {
    let key = des_key_from_7(key7);
    let cipher = Des::new(&key.into());
    let mut block = (*clear).into();
    cipher.encrypt_block(&mut block);
    block.into()
}

/// ChallengeResponse (RFC 2759 §8.5): the 8-octet challenge DES-encrypted under the
/// three 7-octet thirds of the zero-padded 21-octet password hash.
pub fn challenge_response(challenge: &[u8; 8], password_hash: &[u8; 16]) -> [u8; 24] {
    let mut z = [0u8; 21];
    z[..16].copy_from_slice(password_hash);
    let mut out = [0u8; 24];
    for i in 0..3 {
        let mut k = [0u8; 7];
        k.copy_from_slice(&z[7 * i..7 * i + 7]);
        out[8 * i..8 * i + 8].copy_from_slice(&des_encrypt(challenge, &k));
    }
    out
}

/// GenerateNTResponse (RFC 2759 §8.1).
pub fn generate_nt_response(
    auth_challenge: &[u8; 16],
    peer_challenge: &[u8; 16],
    username: &str,
    password: &str,
) -> [u8; 24] {
    let challenge = challenge_hash(peer_challenge, auth_challenge, username);
    challenge_response(&challenge, &nt_password_hash(password))
}

const MAGIC1: &[u8; 39] = b"Magic server to client signing constant";
const MAGIC2: &[u8; 41] = b"Pad to make it do more than one iteration";

fn authenticator_digest(
    password_hash: &[u8; 16],
    nt_response: &[u8; 24],
    peer_challenge: &[u8; 16],
    auth_challenge: &[u8; 16],
    username: &str,
) -> [u8; 20] {
    let hash_hash = hash_nt_password_hash(password_hash);
    let mut h = Sha1::new();
    h.update(hash_hash);
    h.update(nt_response);
    h.update(MAGIC1);
    let digest = h.finalize();
    let challenge = challenge_hash(peer_challenge, auth_challenge, username);
    let mut h = Sha1::new();
    h.update(digest);
    h.update(challenge);
    h.update(MAGIC2);
    h.finalize().into()
}

fn hex_upper(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

/// GenerateAuthenticatorResponse (RFC 2759 §8.7): `"S="` followed by 40 upper-case
/// hex digits.
pub fn generate_authenticator_response(
    password: &str,
    nt_response: &[u8; 24],
    peer_challenge: &[u8; 16],
    auth_challenge: &[u8; 16],
    username: &str,
) -> String {
    let d = authenticator_digest(
        &nt_password_hash(password),
        nt_response,
        peer_challenge,
        auth_challenge,
        username,
    );
    format!("S={}", hex_upper(&d))
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CheckAuthenticatorResponse (RFC 2759 §8.8): whether `received` (the 42-octet
/// `S=...` string, hex in either case) is the response the real authenticator
/// would send. Constant-time in the compared digest.
pub fn check_authenticator_response(
    password: &str,
    nt_response: &[u8; 24],
    peer_challenge: &[u8; 16],
    auth_challenge: &[u8; 16],
    username: &str,
    received: &[u8],
) -> bool {
    let expected = authenticator_digest(
        &nt_password_hash(password),
        nt_response,
        peer_challenge,
        auth_challenge,
        username,
    );
    let Some(hex) = received.strip_prefix(b"S=") else {
        return false;
    };
    match unhex::<20>(hex) {
        Some(got) => constant_time_eq(&got, &expected),
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Packets (RFC 2759 §3-§6)
// ---------------------------------------------------------------------------

/// The `S=... M=...` message of a Success packet (RFC 2759 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessMessage {
    /// The 20-octet authenticator response (decoded from the 40 hex digits).
    pub authenticator_response: [u8; 20],
    /// The `M=` text, if any.
    pub message: String,
}

impl SuccessMessage {
    /// Parses `S=<40 hex>` optionally followed by ` M=<message>`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PppError> {
        let rest = bytes
            .strip_prefix(b"S=")
            .ok_or(PppError::Malformed("success without S="))?;
        let hex = rest
            .get(..40)
            .ok_or(PppError::Malformed("short S= value"))?;
        let authenticator_response =
            unhex::<20>(hex).ok_or(PppError::Malformed("S= value is not 40 hex digits"))?;
        let tail = &rest[40..];
        let message = match tail {
            [] => String::new(),
            _ => {
                let t = String::from_utf8_lossy(tail);
                let t = t.trim_start();
                match t.strip_prefix("M=") {
                    Some(m) => m.to_owned(),
                    None if t.is_empty() => String::new(),
                    None => return Err(PppError::Malformed("garbage after S= value")),
                }
            }
        };
        Ok(SuccessMessage {
            authenticator_response,
            message,
        })
    }

    /// The wire form `S=<HEX> M=<message>` (no ` M=` when the message is empty).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("S={}", hex_upper(&self.authenticator_response));
        if !self.message.is_empty() {
            s.push_str(" M=");
            s.push_str(&self.message);
        }
        s.into_bytes()
    }
}

/// The `E=eeeeeeeeee R=r C=cccc V=vvvvvvvvvv M=<msg>` message of a Failure packet
/// (RFC 2759 §6). Fields other than `M` may be missing on the wire (lenient), but
/// must be well-formed when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureMessage {
    /// The error code (`691` = authentication failure, `648` = password expired, ...).
    pub error: Option<u32>,
    /// `R=1`: the authenticator allows a retry.
    pub retry: bool,
    /// `C=`: a new authenticator challenge for the retry.
    pub challenge: Option<[u8; 16]>,
    /// `V=`: the password-change protocol version.
    pub version: Option<u32>,
    /// The `M=` text.
    pub message: String,
}

impl FailureMessage {
    /// Parses the failure text.
    pub fn parse(bytes: &[u8]) -> Result<Self, PppError> {
        let text = String::from_utf8_lossy(bytes);
        let mut f = FailureMessage {
            error: None,
            retry: false,
            challenge: None,
            version: None,
            message: String::new(),
        };
        let mut rest = text.trim_start();
        while !rest.is_empty() {
            if let Some(m) = rest.strip_prefix("M=") {
                f.message = m.to_owned();
                break;
            }
            let (token, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            rest = tail.trim_start();
            let (key, value) = token
                .split_once('=')
                .ok_or(PppError::Malformed("failure field without '='"))?;
            match key {
                "E" => {
                    f.error = Some(
                        value
                            .parse()
                            .map_err(|_| PppError::Malformed("bad E= value"))?,
                    )
                }
                "R" => {
                    f.retry = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err(PppError::Malformed("bad R= value")),
                    }
                }
                "C" => {
                    f.challenge = Some(
                        unhex::<16>(value.as_bytes()).ok_or(PppError::Malformed("bad C= value"))?,
                    )
                }
                "V" => {
                    f.version = Some(
                        value
                            .parse()
                            .map_err(|_| PppError::Malformed("bad V= value"))?,
                    )
                }
                _ => {} // unknown fields are ignored
            }
        }
        Ok(f)
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut parts = Vec::new();
        if let Some(e) = self.error {
            parts.push(format!("E={e}"));
        }
        parts.push(format!("R={}", u8::from(self.retry)));
        if let Some(c) = self.challenge {
            parts.push(format!("C={}", hex_upper(&c)));
        }
        if let Some(v) = self.version {
            parts.push(format!("V={v}"));
        }
        parts.push(format!("M={}", self.message));
        parts.join(" ").into_bytes()
    }
}

/// An MS-CHAPv2 packet (PPP protocol `0xC223`).
#[derive(Clone, PartialEq, Eq)]
pub enum ChapPacket {
    /// The authenticator's challenge.
    Challenge {
        /// Identifier.
        id: u8,
        /// The 16-octet authenticator challenge.
        challenge: [u8; 16],
        /// The authenticator's name.
        name: Vec<u8>,
    },
    /// The peer's response.
    Response {
        /// Identifier (copied from the Challenge).
        id: u8,
        /// The 16-octet peer challenge.
        peer_challenge: [u8; 16],
        /// The 24-octet NT-Response.
        nt_response: [u8; 24],
        /// Flags (must be zero).
        flags: u8,
        /// The user name.
        name: Vec<u8>,
    },
    /// Success, with the `S=... M=...` message (raw; see [`SuccessMessage`]).
    Success {
        /// Identifier.
        id: u8,
        /// The message field.
        message: Vec<u8>,
    },
    /// Failure, with the `E=... M=...` message (raw; see [`FailureMessage`]).
    Failure {
        /// Identifier.
        id: u8,
        /// The message field.
        message: Vec<u8>,
    },
}

impl std::fmt::Debug for ChapPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChapPacket::Challenge { id, name, .. } => {
                write!(
                    f,
                    "Challenge {{ id: {id}, name: {:?} }}",
                    String::from_utf8_lossy(name)
                )
            }
            ChapPacket::Response { id, name, .. } => {
                write!(
                    f,
                    "Response {{ id: {id}, name: {:?} }}",
                    String::from_utf8_lossy(name)
                )
            }
            ChapPacket::Success { id, message } => {
                write!(
                    f,
                    "Success {{ id: {id}, message: {:?} }}",
                    String::from_utf8_lossy(message)
                )
            }
            ChapPacket::Failure { id, message } => {
                write!(
                    f,
                    "Failure {{ id: {id}, message: {:?} }}",
                    String::from_utf8_lossy(message)
                )
            }
        }
    }
}

impl ChapPacket {
    /// Decodes a CHAP packet (the PPP information field). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, PppError> {
        let p = super::ppp::CpPacket::decode(bytes)?;
        let id = p.id;
        match p.code {
            CHAP_CHALLENGE => {
                let (&size, rest) = p.data.split_first().ok_or(PppError::Truncated)?;
                if size != 16 {
                    return Err(PppError::Malformed("challenge value size is not 16"));
                }
                let (challenge, name) =
                    rest.split_first_chunk::<16>().ok_or(PppError::Truncated)?;
                Ok(ChapPacket::Challenge {
                    id,
                    challenge: *challenge,
                    name: name.to_vec(),
                })
            }
            CHAP_RESPONSE => {
                let (&size, rest) = p.data.split_first().ok_or(PppError::Truncated)?;
                if size != 49 {
                    return Err(PppError::Malformed("response value size is not 49"));
                }
                let (value, name) = rest.split_first_chunk::<49>().ok_or(PppError::Truncated)?;
                let mut peer_challenge = [0u8; 16];
                peer_challenge.copy_from_slice(&value[..16]);
                let mut nt_response = [0u8; 24];
                nt_response.copy_from_slice(&value[24..48]);
                Ok(ChapPacket::Response {
                    id,
                    peer_challenge,
                    nt_response,
                    flags: value[48],
                    name: name.to_vec(),
                })
            }
            CHAP_SUCCESS => Ok(ChapPacket::Success {
                id,
                message: p.data,
            }),
            CHAP_FAILURE => Ok(ChapPacket::Failure {
                id,
                message: p.data,
            }),
            _ => Err(PppError::Malformed("unknown CHAP code")),
        }
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let (code, id, data) = match self {
            ChapPacket::Challenge {
                id,
                challenge,
                name,
            } => {
                let mut d = vec![16];
                d.extend_from_slice(challenge);
                d.extend_from_slice(name);
                (CHAP_CHALLENGE, *id, d)
            }
            ChapPacket::Response {
                id,
                peer_challenge,
                nt_response,
                flags,
                name,
            } => {
                let mut d = vec![49];
                d.extend_from_slice(peer_challenge);
                d.extend_from_slice(&[0u8; 8]);
                d.extend_from_slice(nt_response);
                d.push(*flags);
                d.extend_from_slice(name);
                (CHAP_RESPONSE, *id, d)
            }
            ChapPacket::Success { id, message } => (CHAP_SUCCESS, *id, message.clone()),
            ChapPacket::Failure { id, message } => (CHAP_FAILURE, *id, message.clone()),
        };
        super::ppp::CpPacket { code, id, data }.encode()
    }
}

// ---------------------------------------------------------------------------
// Client (peer) state machine
// ---------------------------------------------------------------------------

/// The MPPE master key material of a successful login (RFC 3079 §3.4), kept out of
/// Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub [u8; 16]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// How an MS-CHAPv2 exchange ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapOutcome {
    /// Success, with the authenticator response verified.
    Success {
        /// The server's `M=` text.
        message: String,
        /// GetMasterKey(PasswordHashHash, NT-Response), for MPPE.
        master_key: MasterKey,
    },
    /// The server sent Failure.
    Failure(FailureMessage),
    /// The server sent Success but its authenticator response is wrong (or
    /// malformed): the server does not know the password. The client must not
    /// trust the link.
    BadAuthenticator,
}

/// The Challenge we answered and our Response.
#[derive(Debug, Clone)]
struct Answered {
    id: u8,
    challenge: [u8; 16],
    nt_response: [u8; 24],
    packet: Vec<u8>,
}

/// The peer side of MS-CHAPv2: answers Challenges and verifies the result.
#[derive(Debug)]
pub struct MsChapClient {
    username: String,
    password: Secret,
    peer_challenge: [u8; 16],
    /// Peer challenges for later challenges of the same session (a
    /// re-authentication): drawn from a seed of the first peer challenge and
    /// the password, so no OS randomness (that could fail) is needed mid-session.
    rechallenge: Entropy,
    answered: Option<Answered>,
    transmit: Vec<Vec<u8>>,
    outcome: Option<ChapOutcome>,
    timer: Option<Instant>,
    resends_left: u32,
}

/// How long the client waits for Success/Failure before repeating its Response.
const RESPONSE_RESEND: Duration = Duration::from_secs(3);
/// How many times the client repeats a Response (RFC 1994 §4.1 obliges the
/// authenticator to answer repeated Responses, so a lost Success/Failure is
/// recovered instead of ending as a timeout).
const RESPONSE_RESENDS: u32 = 4;

impl MsChapClient {
    /// A client for `username` / `password`, with the given 16-octet peer challenge
    /// (random; see [`MsChapClient::new`]).
    pub fn with_peer_challenge(
        username: impl Into<String>,
        password: Secret,
        peer_challenge: [u8; 16],
    ) -> Self {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(b"connexa mschapv2 rechallenge");
        h.update(peer_challenge);
        h.update(password.expose().as_bytes());
        let mut seed = [0u8; 32];
        seed[..20].copy_from_slice(&h.finalize());
        MsChapClient {
            username: username.into(),
            password,
            peer_challenge,
            rechallenge: Entropy::from_seed(seed),
            answered: None,
            transmit: Vec::new(),
            outcome: None,
            timer: None,
            resends_left: 0,
        }
    }

    /// A client with a peer challenge from the OS random source.
    ///
    /// # Panics
    ///
    /// When the OS random source fails (no weaker fallback exists; the tunnel
    /// draws its own seed and reports that failure as an error).
    pub fn new(username: impl Into<String>, password: Secret) -> Self {
        Self::with_peer_challenge(username, password, Entropy::from_os().bytes())
    }

    /// How the exchange ended, once it has.
    pub fn outcome(&self) -> Option<&ChapOutcome> {
        self.outcome.as_ref()
    }

    /// The next CHAP packet to send (the PPP information field).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| self.transmit.remove(0))
    }

    /// Whether a Response has been sent (the server has seen our credentials).
    pub fn has_responded(&self) -> bool {
        self.answered.is_some()
    }

    /// When [`MsChapClient::handle_timeout`] must be called (a Response awaits its
    /// Success/Failure).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// Repeats the Response if no Success/Failure came (at most 4 times, every 3 s).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.timer = None;
        if self.outcome.is_some() || self.resends_left == 0 {
            return;
        }
        if let Some(a) = &self.answered {
            self.transmit.push(a.packet.clone());
            self.resends_left -= 1;
            self.timer = Some(now + RESPONSE_RESEND);
        }
    }

    /// A CHAP packet arrived. Malformed packets and packets that do not match the
    /// outstanding exchange are ignored.
    ///
    /// After a Success, a new Challenge (another id or value) is a re-challenge
    /// (RFC 1994 §4, pppd's `chap-interval`): it is answered with a fresh peer
    /// challenge and the exchange starts over.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        let Ok(packet) = ChapPacket::decode(bytes) else {
            return;
        };
        match (&self.outcome, &packet) {
            (None, _) => {}
            (Some(ChapOutcome::Success { .. }), ChapPacket::Challenge { id, challenge, .. })
                if self
                    .answered
                    .as_ref()
                    .is_none_or(|a| a.id != *id || a.challenge != *challenge) =>
            {
                self.outcome = None;
                self.answered = None;
                self.peer_challenge = self.rechallenge.bytes();
            }
            (Some(ChapOutcome::Success { .. }), ChapPacket::Challenge { .. }) => {
                // The same challenge again: the authenticator missed our Response.
                if let Some(a) = &self.answered {
                    self.transmit.push(a.packet.clone());
                }
                return;
            }
            (Some(_), _) => return,
        }
        match packet {
            ChapPacket::Challenge { id, challenge, .. } => {
                if let Some(a) = &self.answered
                    && a.id == id
                    && a.challenge == challenge
                {
                    // A retransmitted challenge: send the same response again.
                    self.transmit.push(a.packet.clone());
                    self.timer = Some(now + RESPONSE_RESEND);
                    return;
                }
                let nt = generate_nt_response(
                    &challenge,
                    &self.peer_challenge,
                    &self.username,
                    self.password.expose(),
                );
                let resp = ChapPacket::Response {
                    id,
                    peer_challenge: self.peer_challenge,
                    nt_response: nt,
                    flags: 0,
                    name: self.username.as_bytes().to_vec(),
                }
                .encode();
                self.answered = Some(Answered {
                    id,
                    challenge,
                    nt_response: nt,
                    packet: resp.clone(),
                });
                self.transmit.push(resp);
                self.timer = Some(now + RESPONSE_RESEND);
                self.resends_left = RESPONSE_RESENDS;
            }
            ChapPacket::Success { id, message } => {
                let Some(Answered {
                    id: aid,
                    challenge: achal,
                    nt_response: nt,
                    ..
                }) = self.answered.clone()
                else {
                    return;
                };
                if aid != id {
                    return;
                }
                let password = self.password.expose();
                self.timer = None;
                self.outcome = Some(match SuccessMessage::parse(&message) {
                    Ok(s) => {
                        let mut wire = b"S=".to_vec();
                        wire.extend_from_slice(hex_upper(&s.authenticator_response).as_bytes());
                        if check_authenticator_response(
                            password,
                            &nt,
                            &self.peer_challenge,
                            &achal,
                            &self.username,
                            &wire,
                        ) {
                            let hash_hash = hash_nt_password_hash(&nt_password_hash(password));
                            ChapOutcome::Success {
                                message: s.message,
                                master_key: MasterKey(super::mppe::get_master_key(&hash_hash, &nt)),
                            }
                        } else {
                            ChapOutcome::BadAuthenticator
                        }
                    }
                    Err(_) => ChapOutcome::BadAuthenticator,
                });
            }
            ChapPacket::Failure { id, message } => {
                let Some(aid) = self.answered.as_ref().map(|a| a.id) else {
                    return;
                };
                if aid != id {
                    return;
                }
                let f = FailureMessage::parse(&message).unwrap_or_else(|_| FailureMessage {
                    error: None,
                    retry: false,
                    challenge: None,
                    version: None,
                    message: String::from_utf8_lossy(&message).into_owned(),
                });
                self.timer = None;
                self.outcome = Some(ChapOutcome::Failure(f));
            }
            ChapPacket::Response { .. } => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Authenticator (server) state machine
// ---------------------------------------------------------------------------

/// A table of user names and passwords, shared between sessions.
pub type Credentials = Arc<HashMap<String, Secret>>;

/// How an exchange ended, from the authenticator's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthenticatorOutcome {
    /// The peer proved it knows the password of `user`.
    Accepted {
        /// The authenticated user name.
        user: String,
    },
    /// Wrong password or unknown user (Failure E=691 was sent).
    Rejected {
        /// The user name the peer claimed.
        user: String,
    },
    /// The peer never answered the Challenge.
    NoResponse,
}

/// The authenticator side of MS-CHAPv2 (server): sends a Challenge, checks the
/// Response against a credential table, answers Success or Failure E=691.
#[derive(Debug)]
pub struct MsChapAuthenticator {
    credentials: Credentials,
    name: Vec<u8>,
    challenge: [u8; 16],
    id: u8,
    restart: Duration,
    retries_left: u32,
    timer: Option<Instant>,
    result_packet: Option<Vec<u8>>,
    transmit: Vec<Vec<u8>>,
    outcome: Option<AuthenticatorOutcome>,
    master_key: Option<MasterKey>,
    started: bool,
}

impl MsChapAuthenticator {
    /// An authenticator with a fixed challenge (tests); see [`MsChapAuthenticator::new`].
    pub fn with_challenge(
        credentials: Credentials,
        name: impl Into<Vec<u8>>,
        challenge: [u8; 16],
        id: u8,
    ) -> Self {
        MsChapAuthenticator {
            credentials,
            name: name.into(),
            challenge,
            id,
            restart: Duration::from_secs(3),
            retries_left: 10,
            timer: None,
            result_packet: None,
            transmit: Vec::new(),
            outcome: None,
            master_key: None,
            started: false,
        }
    }

    /// The MPPE master key (RFC 3079 §3.4) once the peer was accepted.
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.master_key.as_ref()
    }

    /// An authenticator with a random challenge.
    ///
    /// # Panics
    ///
    /// When the OS random source fails.
    pub fn new(credentials: Credentials, name: impl Into<Vec<u8>>) -> Self {
        let mut e = Entropy::from_os();
        let challenge = e.bytes();
        let id = e.bytes::<1>()[0];
        Self::with_challenge(credentials, name, challenge, id)
    }

    /// Sends the Challenge (and retransmits it every 3 s, up to 10 times).
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.send_challenge(now);
    }

    fn send_challenge(&mut self, now: Instant) {
        let c = ChapPacket::Challenge {
            id: self.id,
            challenge: self.challenge,
            name: self.name.clone(),
        };
        self.transmit.push(c.encode());
        self.retries_left = self.retries_left.saturating_sub(1);
        self.timer = Some(now + self.restart);
    }

    /// How the exchange ended, once it has.
    pub fn outcome(&self) -> Option<&AuthenticatorOutcome> {
        self.outcome.as_ref()
    }

    /// The next CHAP packet to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| self.transmit.remove(0))
    }

    /// When [`MsChapAuthenticator::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// Retransmits the Challenge, or gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.timer = None;
        if self.outcome.is_some() {
            return;
        }
        if self.retries_left == 0 {
            self.outcome = Some(AuthenticatorOutcome::NoResponse);
        } else {
            self.send_challenge(now);
        }
    }

    /// A CHAP packet arrived from the peer.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if !self.started {
            return;
        }
        let Ok(ChapPacket::Response {
            id,
            peer_challenge,
            nt_response,
            name,
            ..
        }) = ChapPacket::decode(bytes)
        else {
            return;
        };
        if id != self.id {
            return;
        }
        if let Some(p) = &self.result_packet {
            // The peer missed our answer: repeat it.
            self.transmit.push(p.clone());
            return;
        }
        self.timer = None;
        let user = String::from_utf8_lossy(&name).into_owned();
        let password = self
            .credentials
            .get(bare_username(&user))
            .or_else(|| self.credentials.get(&user));
        let ok = password.is_some_and(|pw| {
            let expected =
                generate_nt_response(&self.challenge, &peer_challenge, &user, pw.expose());
            constant_time_eq(&expected, &nt_response)
        });
        let (packet, outcome) = match (ok, password) {
            (true, Some(pw)) => {
                let s = generate_authenticator_response(
                    pw.expose(),
                    &nt_response,
                    &peer_challenge,
                    &self.challenge,
                    &user,
                );
                let mut msg = s.into_bytes();
                msg.extend_from_slice(b" M=Access granted");
                self.master_key = Some(MasterKey(crate::pptp::mppe::get_master_key(
                    &hash_nt_password_hash(&nt_password_hash(pw.expose())),
                    &nt_response,
                )));
                (
                    ChapPacket::Success { id, message: msg },
                    AuthenticatorOutcome::Accepted { user },
                )
            }
            _ => {
                let f = FailureMessage {
                    error: Some(ERROR_AUTHENTICATION_FAILURE),
                    retry: false,
                    challenge: Some(self.challenge),
                    version: Some(3),
                    message: "Authentication failure".into(),
                };
                (
                    ChapPacket::Failure {
                        id,
                        message: f.encode(),
                    },
                    AuthenticatorOutcome::Rejected { user },
                )
            }
        };
        let bytes = packet.encode();
        self.result_packet = Some(bytes.clone());
        self.transmit.push(bytes);
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 2759 §9.2, "Hash Example".
    const AUTH_CHALLENGE: [u8; 16] = [
        0x5B, 0x5D, 0x7C, 0x7D, 0x7B, 0x3F, 0x2F, 0x3E, 0x3C, 0x2C, 0x60, 0x21, 0x32, 0x26, 0x26,
        0x28,
    ];
    const PEER_CHALLENGE: [u8; 16] = [
        0x21, 0x40, 0x23, 0x24, 0x25, 0x5E, 0x26, 0x2A, 0x28, 0x29, 0x5F, 0x2B, 0x3A, 0x33, 0x7C,
        0x7E,
    ];
    const CHALLENGE: [u8; 8] = [0xD0, 0x2E, 0x43, 0x86, 0xBC, 0xE9, 0x12, 0x26];
    const PASSWORD_HASH: [u8; 16] = [
        0x44, 0xEB, 0xBA, 0x8D, 0x53, 0x12, 0xB8, 0xD6, 0x11, 0x47, 0x44, 0x11, 0xF5, 0x69, 0x89,
        0xAE,
    ];
    const NT_RESPONSE: [u8; 24] = [
        0x82, 0x30, 0x9E, 0xCD, 0x8D, 0x70, 0x8B, 0x5E, 0xA0, 0x8F, 0xAA, 0x39, 0x81, 0xCD, 0x83,
        0x54, 0x42, 0x33, 0x11, 0x4A, 0x3D, 0x85, 0xD6, 0xDF,
    ];
    const PASSWORD_HASH_HASH: [u8; 16] = [
        0x41, 0xC0, 0x0C, 0x58, 0x4B, 0xD2, 0xD9, 0x1C, 0x40, 0x17, 0xA2, 0xA1, 0x2F, 0xA5, 0x9F,
        0x3F,
    ];
    const AUTH_RESPONSE: &str = "S=407A5589115FD0D6209F510FE9C04566932CDA56";

    #[test]
    fn rfc2759_section_9_2_byte_for_byte() {
        assert_eq!(
            challenge_hash(&PEER_CHALLENGE, &AUTH_CHALLENGE, "User"),
            CHALLENGE
        );
        assert_eq!(nt_password_hash("clientPass"), PASSWORD_HASH);
        assert_eq!(challenge_response(&CHALLENGE, &PASSWORD_HASH), NT_RESPONSE);
        assert_eq!(
            generate_nt_response(&AUTH_CHALLENGE, &PEER_CHALLENGE, "User", "clientPass"),
            NT_RESPONSE
        );
        assert_eq!(hash_nt_password_hash(&PASSWORD_HASH), PASSWORD_HASH_HASH);
        assert_eq!(
            generate_authenticator_response(
                "clientPass",
                &NT_RESPONSE,
                &PEER_CHALLENGE,
                &AUTH_CHALLENGE,
                "User"
            ),
            AUTH_RESPONSE
        );
        assert!(check_authenticator_response(
            "clientPass",
            &NT_RESPONSE,
            &PEER_CHALLENGE,
            &AUTH_CHALLENGE,
            "User",
            AUTH_RESPONSE.as_bytes()
        ));
        // Lower-case hex is the same response.
        assert!(check_authenticator_response(
            "clientPass",
            &NT_RESPONSE,
            &PEER_CHALLENGE,
            &AUTH_CHALLENGE,
            "User",
            AUTH_RESPONSE.to_lowercase().replace("s=", "S=").as_bytes()
        ));
        // One flipped digit, a wrong password, a truncated string: refused.
        let mut bad = AUTH_RESPONSE.as_bytes().to_vec();
        bad[10] = b'0';
        for (pw, resp) in [
            ("clientPass", &bad[..]),
            ("clientpass", AUTH_RESPONSE.as_bytes()),
            ("clientPass", &AUTH_RESPONSE.as_bytes()[..41]),
        ] {
            assert!(!check_authenticator_response(
                pw,
                &NT_RESPONSE,
                &PEER_CHALLENGE,
                &AUTH_CHALLENGE,
                "User",
                resp
            ));
        }
    }

    #[test]
    fn domain_prefix_is_not_hashed() {
        assert_eq!(
            challenge_hash(&PEER_CHALLENGE, &AUTH_CHALLENGE, "CORP\\User"),
            CHALLENGE
        );
    }

    #[test]
    fn des_key_expansion() {
        // 7 octets of ones spread into 8 octets with the parity bit clear.
        assert_eq!(des_key_from_7(&[0xFF; 7]), [0xFE; 8]);
        assert_eq!(
            des_key_from_7(&[0x80, 0, 0, 0, 0, 0, 0x01]),
            [0x80, 0, 0, 0, 0, 0, 0, 0x02]
        );
    }

    #[test]
    fn messages_parse() {
        let s =
            SuccessMessage::parse(b"S=407A5589115FD0D6209F510FE9C04566932CDA56 M=Access granted")
                .unwrap();
        assert_eq!(s.message, "Access granted");
        assert_eq!(
            String::from_utf8(s.encode()).unwrap(),
            format!("{AUTH_RESPONSE} M=Access granted")
        );
        assert!(
            SuccessMessage::parse(AUTH_RESPONSE.as_bytes())
                .unwrap()
                .message
                .is_empty()
        );
        assert!(SuccessMessage::parse(b"S=407A55").is_err());
        assert!(SuccessMessage::parse(b"M=hi").is_err());

        let f = FailureMessage::parse(
            b"E=691 R=1 C=5B5D7C7D7B3F2F3E3C2C602132262628 V=3 M=Authentication failure, try again",
        )
        .unwrap();
        assert_eq!(f.error, Some(691));
        assert!(f.retry);
        assert_eq!(f.challenge, Some(AUTH_CHALLENGE));
        assert_eq!(f.version, Some(3));
        assert_eq!(f.message, "Authentication failure, try again");
        assert_eq!(FailureMessage::parse(&f.encode()).unwrap(), f);
        let minimal = FailureMessage::parse(b"E=648 R=0 V=3").unwrap();
        assert_eq!(
            (minimal.error, minimal.retry, minimal.message.as_str()),
            (Some(648), false, "")
        );
        assert!(FailureMessage::parse(b"E=x R=0").is_err());
        assert!(FailureMessage::parse(b"E=691 R=2").is_err());
        assert!(FailureMessage::parse(b"E=691 C=12").is_err());
    }

    #[test]
    fn chap_packets_round_trip() {
        let pkts = [
            ChapPacket::Challenge {
                id: 1,
                challenge: AUTH_CHALLENGE,
                name: b"pptpd".to_vec(),
            },
            ChapPacket::Response {
                id: 1,
                peer_challenge: PEER_CHALLENGE,
                nt_response: NT_RESPONSE,
                flags: 0,
                name: b"User".to_vec(),
            },
            ChapPacket::Success {
                id: 1,
                message: AUTH_RESPONSE.as_bytes().to_vec(),
            },
            ChapPacket::Failure {
                id: 1,
                message: b"E=691 R=0 V=3".to_vec(),
            },
        ];
        for p in pkts {
            assert_eq!(ChapPacket::decode(&p.encode()).unwrap(), p);
        }
        // A Response value is 16 peer challenge + 8 zero + 24 NT-Response + flags.
        let wire = ChapPacket::Response {
            id: 7,
            peer_challenge: PEER_CHALLENGE,
            nt_response: NT_RESPONSE,
            flags: 0,
            name: b"User".to_vec(),
        }
        .encode();
        assert_eq!(&wire[..5], &[2, 7, 0, 58, 49]);
        assert_eq!(&wire[5..21], &PEER_CHALLENGE);
        assert_eq!(&wire[21..29], &[0; 8]);
        assert_eq!(&wire[29..53], &NT_RESPONSE);
        assert_eq!(&wire[54..], b"User");
    }

    fn table() -> Credentials {
        Arc::new(HashMap::from([(
            "User".to_owned(),
            Secret::new("clientPass"),
        )]))
    }

    fn exchange(user: &str, password: &str) -> (Option<ChapOutcome>, Option<AuthenticatorOutcome>) {
        let t0 = Instant::now();
        let mut server = MsChapAuthenticator::with_challenge(table(), "srv", AUTH_CHALLENGE, 9);
        let mut client =
            MsChapClient::with_peer_challenge(user, Secret::new(password), PEER_CHALLENGE);
        server.start(t0);
        for _ in 0..4 {
            while let Some(p) = server.poll_transmit() {
                client.handle_input(&p, t0);
            }
            while let Some(p) = client.poll_transmit() {
                server.handle_input(&p);
            }
        }
        (client.outcome().cloned(), server.outcome().cloned())
    }

    #[test]
    fn client_and_authenticator_agree() {
        let (c, s) = exchange("User", "clientPass");
        match c {
            Some(ChapOutcome::Success { master_key, .. }) => {
                // RFC 3079 §3.5.1 MasterKey for the same exchange.
                assert_eq!(
                    master_key.0,
                    [
                        0xFD, 0xEC, 0xE3, 0x71, 0x7A, 0x8C, 0x83, 0x8C, 0xB3, 0x88, 0xE5, 0x27,
                        0xAE, 0x3C, 0xDD, 0x31
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s,
            Some(AuthenticatorOutcome::Accepted {
                user: "User".into()
            })
        );

        let (c, s) = exchange("User", "wrong");
        let Some(ChapOutcome::Failure(f)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(f.error, Some(691));
        assert_eq!(
            s,
            Some(AuthenticatorOutcome::Rejected {
                user: "User".into()
            })
        );

        let (c, _) = exchange("nobody", "clientPass");
        assert!(matches!(
            c,
            Some(ChapOutcome::Failure(FailureMessage {
                error: Some(691),
                ..
            }))
        ));
    }

    #[test]
    fn client_refuses_a_forged_success() {
        let mut client =
            MsChapClient::with_peer_challenge("User", Secret::new("clientPass"), PEER_CHALLENGE);
        client.handle_input(
            &ChapPacket::Challenge {
                id: 3,
                challenge: AUTH_CHALLENGE,
                name: vec![],
            }
            .encode(),
            Instant::now(),
        );
        assert!(client.poll_transmit().is_some());
        let forged = b"S=0000000000000000000000000000000000000000 M=welcome".to_vec();
        // A Success for another id is ignored; for ours it is checked and refused.
        client.handle_input(
            &ChapPacket::Success {
                id: 4,
                message: forged.clone(),
            }
            .encode(),
            Instant::now(),
        );
        assert!(client.outcome().is_none());
        client.handle_input(
            &ChapPacket::Success {
                id: 3,
                message: forged,
            }
            .encode(),
            Instant::now(),
        );
        assert_eq!(client.outcome(), Some(&ChapOutcome::BadAuthenticator));
    }

    #[test]
    fn rechallenge_after_success_is_answered_afresh() {
        let t0 = Instant::now();
        let mut server = MsChapAuthenticator::with_challenge(table(), "srv", AUTH_CHALLENGE, 9);
        let mut client =
            MsChapClient::with_peer_challenge("User", Secret::new("clientPass"), PEER_CHALLENGE);
        server.start(t0);
        for _ in 0..3 {
            while let Some(p) = server.poll_transmit() {
                client.handle_input(&p, t0);
            }
            while let Some(p) = client.poll_transmit() {
                server.handle_input(&p);
            }
        }
        assert!(matches!(
            client.outcome(),
            Some(ChapOutcome::Success { .. })
        ));
        // A second authenticator challenges again with a new id and value.
        let mut again = MsChapAuthenticator::with_challenge(table(), "srv", [7; 16], 10);
        again.start(t0);
        for _ in 0..3 {
            while let Some(p) = again.poll_transmit() {
                client.handle_input(&p, t0);
            }
            while let Some(p) = client.poll_transmit() {
                if let Ok(ChapPacket::Response { peer_challenge, .. }) = ChapPacket::decode(&p) {
                    assert_ne!(peer_challenge, PEER_CHALLENGE, "fresh peer challenge");
                }
                again.handle_input(&p);
            }
        }
        assert_eq!(
            again.outcome(),
            Some(&AuthenticatorOutcome::Accepted {
                user: "User".into()
            })
        );
        assert!(matches!(
            client.outcome(),
            Some(ChapOutcome::Success { .. })
        ));
    }

    #[test]
    fn retransmitted_challenge_gets_the_same_response() {
        let mut client =
            MsChapClient::with_peer_challenge("User", Secret::new("clientPass"), PEER_CHALLENGE);
        let c = ChapPacket::Challenge {
            id: 3,
            challenge: AUTH_CHALLENGE,
            name: vec![],
        }
        .encode();
        client.handle_input(&c, Instant::now());
        let a = client.poll_transmit();
        client.handle_input(&c, Instant::now());
        assert_eq!(client.poll_transmit(), a);
    }

    #[test]
    fn authenticator_gives_up_on_a_silent_peer() {
        let t0 = Instant::now();
        let mut server = MsChapAuthenticator::with_challenge(table(), "srv", AUTH_CHALLENGE, 9);
        server.start(t0);
        let mut sent = 0;
        while server.outcome().is_none() {
            while server.poll_transmit().is_some() {
                sent += 1;
            }
            let t = server.poll_timeout().expect("timer runs until an outcome");
            server.handle_timeout(t);
        }
        assert_eq!(sent, 10);
        assert_eq!(server.outcome(), Some(&AuthenticatorOutcome::NoResponse));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let client =
            MsChapClient::with_peer_challenge("User", Secret::new("clientPass"), PEER_CHALLENGE);
        let shown = format!("{client:?} {:?}", MasterKey([7; 16]));
        assert!(!shown.contains("clientPass"), "{shown}");
        assert!(!shown.contains("7, 7"), "{shown}");
    }

    proptest! {
        #[test]
        fn chap_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = ChapPacket::decode(&bytes) {
                prop_assert_eq!(ChapPacket::decode(&p.encode()), Ok(p));
            }
            let _ = SuccessMessage::parse(&bytes);
            let _ = FailureMessage::parse(&bytes);
            let mut client = MsChapClient::with_peer_challenge("u", Secret::new("p"), [1; 16]);
            client.handle_input(&bytes, Instant::now());
        }

        #[test]
        fn chap_parsers_never_panic_on_framed_input(code in 1u8..5, id: u8,
                body in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut b = vec![code, id];
            b.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            b.extend(body.iter().copied());
            let _ = ChapPacket::decode(&b);
            let _ = FailureMessage::parse(&body);
            let mut server = MsChapAuthenticator::with_challenge(table(), "s", [2; 16], id);
            server.start(Instant::now());
            server.handle_input(&b);
        }

        #[test]
        fn failure_message_round_trip(error in proptest::option::of(0u32..10_000_000), retry: bool,
                challenge in proptest::option::of(any::<[u8; 16]>()), version in proptest::option::of(0u32..100),
                message in "[ -~]{0,40}") {
            let f = FailureMessage { error, retry, challenge, version, message };
            prop_assert_eq!(FailureMessage::parse(&f.encode()), Ok(f));
        }
    }
}
