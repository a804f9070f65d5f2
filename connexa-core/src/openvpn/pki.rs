//! The PKI of `openvpn` services, made with `rcgen` (ECDSA P-256): one CA
//! kept in the data directory (`ca.pem`, and `ca.key` with mode 0600), a
//! server certificate per service start and a client certificate per
//! service. Every certificate has a random 128-bit serial number; the server
//! and client certificates carry the key and extended key usages OpenVPN's
//! `remote-cert-tls` checks.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::{ClientCredentials, OpenvpnError, server_name};
use crate::domain::NodeId;

/// The CA certificate's file name in the data directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in the data directory (mode 0600).
pub const CA_KEY: &str = "ca.key";
/// The CA's common name.
pub const CA_NAME: &str = "Connexa OpenVPN CA";

fn ca_err(e: impl std::fmt::Display) -> OpenvpnError {
    OpenvpnError::Ca(e.to_string())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], OpenvpnError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ca_err(format!("no randomness: {e}")))?;
    Ok(b)
}

fn params(cn: &str) -> Result<CertificateParams, OpenvpnError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(ca_err)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    let mut serial = random_bytes::<16>()?;
    // A positive serial number.
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(p)
}

fn ca_params() -> Result<CertificateParams, OpenvpnError> {
    let mut p = params(CA_NAME)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// The certificate authority of `openvpn` services.
pub struct Ca {
    /// The CA certificate, PEM (what profiles carry in `<ca>`).
    pub cert_pem: String,
    key: KeyPair,
    params: CertificateParams,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA (in memory).
    pub fn generate() -> Result<Ca, OpenvpnError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let params = ca_params()?;
        let cert_pem = params.self_signed(&key).map_err(ca_err)?.pem();
        Ok(Ca {
            cert_pem,
            key,
            params,
        })
    }

    /// The CA kept in `dir`, created there (key mode 0600) when absent. A
    /// key file readable by others is refused.
    pub fn load_or_create(dir: &Path) -> Result<Ca, OpenvpnError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !key_path.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ca_err(format!("cannot create {}: {e}", dir.display())))?;
            let ca = Ca::generate()?;
            // create_new: of two processes creating it at once, one wins and
            // the other loads the winner's.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
            {
                Ok(mut f) => {
                    let tmp = dir.join(format!("{CA_CERT}.{}.tmp", std::process::id()));
                    let written = std::fs::write(&tmp, &ca.cert_pem)
                        .and_then(|()| std::fs::rename(&tmp, &cert_path))
                        .and_then(|()| f.write_all(ca.key.serialize_pem().as_bytes()))
                        .and_then(|()| f.sync_all());
                    if let Err(e) = written {
                        let _ = std::fs::remove_file(&key_path);
                        return Err(ca_err(format!("cannot write {}: {e}", key_path.display())));
                    }
                    tracing::info!(dir = %dir.display(), "created the OpenVPN CA");
                    return Ok(ca);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ca_err(format!("cannot create {}: {e}", key_path.display())));
                }
            }
        }
        // Written by another process just now: give it a moment.
        let mut key_pem = String::new();
        for _ in 0..20 {
            key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| ca_err(format!("cannot read {}: {e}", key_path.display())))?;
            if key_pem.contains("-----END") && cert_path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mode = std::fs::metadata(&key_path)
            .map_err(|e| ca_err(format!("{}: {e}", key_path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ca_err(format!(
                "{} is readable by others (mode {:04o}): chmod 600 {}",
                key_path.display(),
                mode & 0o7777,
                key_path.display()
            )));
        }
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| ca_err(format!("{}: {e}", key_path.display())))?;
        let cert_pem = std::fs::read_to_string(&cert_path)
            .map_err(|e| ca_err(format!("cannot read {}: {e}", cert_path.display())))?;
        Ok(Ca {
            cert_pem,
            key,
            // Issuing needs the CA's name, key usages and key identifier
            // method only: the same as when it was made.
            params: ca_params()?,
        })
    }

    fn issue(
        &self,
        cn: &str,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), OpenvpnError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let mut p = params(cn)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).map_err(ca_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Whether `cert_pem` was issued by this CA: its authority key
    /// identifier is this CA's key identifier. A certificate of another
    /// host's CA (a service moved between workers that do not share the
    /// CA files) is not.
    pub fn issued(&self, cert_pem: &str) -> bool {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
            return false;
        };
        let id = self.params.key_identifier(&self.key);
        !id.is_empty() && der.windows(id.len()).any(|w| w == id.as_slice())
    }

    /// A server certificate and key (PEM) for `node`'s service.
    pub fn issue_server(&self, node: NodeId) -> Result<(String, String), OpenvpnError> {
        self.issue(&server_name(node), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// New client credentials for `node`'s service, with a common name of
    /// its own (`connexa-ovpn-client-<id>-<random>`).
    pub fn issue_client(
        &self,
        node: NodeId,
        subnet: Ipv4Addr,
    ) -> Result<ClientCredentials, OpenvpnError> {
        let common_name = format!(
            "connexa-ovpn-client-{}-{}",
            node.0,
            hex::encode(random_bytes::<8>()?)
        );
        let (cert_pem, key_pem) = self.issue(&common_name, ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(ClientCredentials {
            subnet,
            common_name,
            cert_pem,
            key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        assert_eq!(again.key.serialize_pem(), ca.key.serialize_pem());
        // Clients of the reloaded CA are distinct.
        let a = again
            .issue_client(NodeId(1), Ipv4Addr::new(10, 201, 0, 0))
            .unwrap();
        let b = again
            .issue_client(NodeId(1), Ipv4Addr::new(10, 201, 0, 0))
            .unwrap();
        assert_ne!(a.common_name, b.common_name);
        assert_ne!(a.key_pem, b.key_pem);
        assert!(a.common_name.starts_with("connexa-ovpn-client-1-"));
        assert!(ca.issued(&a.cert_pem) && again.issued(&b.cert_pem));
        let other = Ca::generate().unwrap();
        assert!(!other.issued(&a.cert_pem), "another CA's client");
        assert!(!ca.issued("not a certificate"));

        std::fs::set_permissions(
            dir.path().join(CA_KEY),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = Ca::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
