//! TLS for `https://` speed test endpoints: rustls (ring provider) over a
//! [`TunnelStream`], server certificates verified against the Mozilla roots
//! (`webpki-roots`, the same on every machine; the operating system's store is
//! not consulted) plus the operator's extra CA certificates
//! (`[test] test_ca_file`), SNI and name check from the URL's host.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::http::HttpUrl;
use crate::tunnel::TunnelStream;

/// Reads every PEM `CERTIFICATE` of a file.
///
/// # Errors
/// The file cannot be read, a PEM block is malformed, or it holds no certificate.
pub fn load_ca_file(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let pem = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// A TLS connector trusting the Mozilla roots and the certificates of
/// `ca_file` (if any).
///
/// # Errors
/// The CA file cannot be loaded or holds a certificate that is not a valid CA.
pub fn connector(ca_file: Option<&Path>) -> io::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_ca_file(path)? {
            roots.add(cert).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: unusable CA certificate: {e}", path.display()),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS handshake that failed on the endpoint's side (certificate rejected,
/// protocol error): retrying cannot help, so the speed test stops on it.
#[derive(Debug)]
struct HandshakeFailed(String);

impl fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandshakeFailed {}

/// Whether `e` is a TLS handshake failure of [`handshake`] (as opposed to a
/// transient I/O error).
pub fn is_handshake_failure(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<HandshakeFailed>().is_some())
}

/// TLS handshake over `stream` with SNI and name check for `url.host`.
///
/// # Errors
/// An invalid host name, I/O errors, or a TLS failure (see
/// [`is_handshake_failure`]; its message names the endpoint and the reason,
/// e.g. `invalid peer certificate: UnknownIssuer`).
pub async fn handshake(
    connector: &TlsConnector,
    url: &HttpUrl,
    stream: TunnelStream,
) -> io::Result<TlsStream<TunnelStream>> {
    let name = ServerName::try_from(url.host.clone()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            HandshakeFailed(format!("bad TLS server name {:?}: {e}", url.host)),
        )
    })?;
    connector.connect(name, stream).await.map_err(|e| {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => io::Error::new(
                e.kind(),
                HandshakeFailed(format!(
                    "TLS handshake with https://{}:{} failed: {tls}",
                    url.host, url.port
                )),
            ),
            None => e,
        }
    })
}
