//! A throw-away PKI for TLS tests: a CA, a server certificate it signed, and
//! an unrelated "wrong" CA for negative tests.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::error::{io_err, Result};

/// A server certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain PEM.
    pub cert: PathBuf,
    /// The unencrypted private key PEM.
    pub key: PathBuf,
}

/// PEM files of a freshly generated test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    ca_pem: PathBuf,
    wrong_ca_pem: PathBuf,
    server: TlsFiles,
}

impl TestPki {
    /// Generates the PKI into `dir` (which must exist): `ca.pem`,
    /// `wrong-ca.pem`, `server.pem` and `server.key`. The server certificate
    /// is valid for `localhost` and `127.0.0.1`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let (ca, ca_key) = new_ca("cutover test CA")?;
        let (wrong_ca, _) = new_ca("cutover wrong CA")?;

        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server = params.signed_by(&server_key, &ca, &ca_key)?;

        let pki = TestPki {
            ca_pem: dir.join("ca.pem"),
            wrong_ca_pem: dir.join("wrong-ca.pem"),
            server: TlsFiles {
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
            },
        };
        write(&pki.ca_pem, &ca.pem())?;
        write(&pki.wrong_ca_pem, &wrong_ca.pem())?;
        write(&pki.server.cert, &server.pem())?;
        write(&pki.server.key, &server_key.serialize_pem())?;
        Ok(pki)
    }

    /// The CA that signed the server certificate.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// A CA unrelated to the server certificate; trusting only it must fail.
    pub fn wrong_ca_pem(&self) -> &Path {
        &self.wrong_ca_pem
    }

    /// The server certificate PEM.
    pub fn server_cert(&self) -> &Path {
        &self.server.cert
    }

    /// The server private key PEM.
    pub fn server_key(&self) -> &Path {
        &self.server.key
    }

    /// The server certificate and key, as a Dovecot TLS setting.
    pub fn tls_files(&self) -> TlsFiles {
        self.server.clone()
    }
}

/// A self-signed CA certificate with its key.
fn new_ca(name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

fn write(path: &Path, pem: &str) -> Result<()> {
    fs::write(path, pem).map_err(io_err("writing", path))
}
