//! TCP and TLS: the byte stream an IMAP session runs over.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// How certificates are checked.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM) trusted besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate. Only for lab servers; logged loudly.
    pub insecure: bool,
}

/// A connection that is either plain TCP or TLS over TCP.
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Transport::Plain",
            Self::Tls(_) => "Transport::Tls",
        })
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a TCP connection with a deadline.
pub async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let endpoint = format!("{host}:{port}");
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(Error::Connect { endpoint, source }),
        Err(_) => {
            return Err(Error::Timeout {
                endpoint,
                seconds: timeout.as_secs(),
                during: "connect".into(),
            })
        }
    };
    // IMAP is many small command lines; Nagle would hold them back.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs the TLS handshake on an open TCP connection.
pub async fn start_tls(
    tcp: TcpStream,
    host: &str,
    port: u16,
    options: &TlsOptions,
    timeout: Duration,
) -> Result<Transport> {
    let endpoint = format!("{host}:{port}");
    let tls_error = |detail: String| Error::Tls {
        endpoint: endpoint.clone(),
        detail,
    };
    let config = client_config(options).map_err(tls_error)?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| tls_error(format!("bad server name: {e}")))?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Transport::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(tls_error(e.to_string())),
        Err(_) => Err(Error::Timeout {
            endpoint,
            seconds: timeout.as_secs(),
            during: "TLS handshake".into(),
        }),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration of every connection cutover makes (IMAP,
/// and the PostgreSQL state).
pub(crate) fn client_config(options: &TlsOptions) -> std::result::Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if options.insecure {
        tracing::warn!("TLS certificate verification is OFF (--insecure): use only for lab servers");
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &options.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> std::result::Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The `--insecure` verifier: checks signatures but trusts any certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
