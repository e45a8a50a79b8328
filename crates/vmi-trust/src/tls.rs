//! TLS configurations that trust only the provider CA, the identity check, and dialling.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{Credentials, TrustError};

/// The only application protocol spoken: HTTP/1.1 (WebSocket upgrades ride on it).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// ring, named explicitly rather than relying on a process-wide default provider.
///
/// rustls deprecates ring's provider for lacking post-quantum key exchange; ring is chosen anyway
/// because the alternative (aws-lc-rs) needs cmake and a long C build on every machine.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM text, at least one.
fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let pem_error = |reason: String| TrustError::Pem { what: what.to_string(), reason };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TrustError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TrustError::Pem { what: "the private key".into(), reason: e.to_string() })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "the CA certificate")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The server side: presents `creds`' certificate; a client certificate is optional but, when
/// presented, must chain to `creds.ca_pem` or the handshake fails. TLS 1.3 only, ALPN http/1.1.
///
/// Optional because browsers and terminals connect without one and authenticate with tokens; who a
/// client certificate names is then read per request ([`peer_is`]).
pub fn server_config(creds: &Credentials) -> Result<Arc<ServerConfig>, TrustError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&creds.ca_pem)?), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&creds.cert_pem, "the service certificate")?, private_key(&creds.key_pem)?)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: trusts only the provider CA in `ca_pem`, and presents `client`'s certificate
/// when given (mutual TLS between machines). TLS 1.3 only, ALPN http/1.1.
pub fn client_config(ca_pem: &str, client: Option<&Credentials>) -> Result<Arc<ClientConfig>, TrustError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match client {
        Some(creds) => builder
            .with_client_auth_cert(certs(&creds.cert_pem, "the client certificate")?, private_key(&creds.key_pem)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Whether the peer's end-entity certificate (the first of `certs`) is valid for the DNS name
/// `name`, e.g. `site-a.site.vmi`.
///
/// The chain was verified against the provider CA in the handshake; this only asks whether the
/// CA-signed certificate names `name`. False for no certificate, an unparsable one or a bad name.
pub fn peer_is(certs: &[CertificateDer<'_>], name: &str) -> bool {
    let Some(end_entity) = certs.first() else { return false };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(end_entity) else { return false };
    let Ok(name) = ServerName::try_from(name) else { return false };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// `name` as a TLS server name: a DNS name, or an IP literal (brackets around IPv6 allowed, as in URLs).
fn server_name(name: &str) -> Result<ServerName<'static>, TrustError> {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    ServerName::try_from(bare.to_string()).map_err(|_| TrustError::InvalidServerName { name: name.to_string() })
}

/// Dials `addr` (host:port) and makes a TLS handshake that requires the server's certificate to
/// name `server_name`.
///
/// `server_name` may be an identity name (`site-b.site.vmi`: checked whatever address was dialled,
/// so a URL pointing elsewhere cannot stand in for site-b) or the host of a URL (an IP literal is
/// checked against the certificate's IP SANs).
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TrustError> {
    let name = self::server_name(server_name)?;
    let tcp =
        TcpStream::connect(addr).await.map_err(|source| TrustError::Connect { addr: addr.to_string(), source })?;
    // Small interactive frames (input, screen updates) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config).connect(name, tcp).await.map_err(|source| TrustError::Handshake {
        addr: addr.to_string(),
        server_name: server_name.to_string(),
        source,
    })
}

/// Dials `addr` plainly (`http://`, `ws://`) or with TLS (`https://`, `wss://`, when `tls`), giving
/// HTTP and WebSocket clients one stream type for both.
///
/// With `tls`, `config` must be given (else [`TrustError::NoTlsConfig`]) and the server's
/// certificate must name `server_name` (see [`connect`]). Without `tls`, `config` is ignored.
pub async fn dial(
    tls: bool,
    addr: &str,
    server_name: &str,
    config: Option<Arc<ClientConfig>>,
) -> Result<Stream, TrustError> {
    if !tls {
        let tcp =
            TcpStream::connect(addr).await.map_err(|source| TrustError::Connect { addr: addr.to_string(), source })?;
        let _ = tcp.set_nodelay(true);
        return Ok(Stream::Plain(tcp));
    }
    let config = config.ok_or_else(|| TrustError::NoTlsConfig { addr: addr.to_string() })?;
    Ok(Stream::Tls(Box::new(connect(addr, server_name, config).await?)))
}

/// A client connection, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (`http://`, `ws://`).
    Plain(TcpStream),
    /// TLS over TCP (`https://`, `wss://`); boxed because the TLS state is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether this connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertRequest, KeyPair};

    fn cert_of(pem: &str) -> CertificateDer<'static> {
        crate::pki::first_cert(pem, "test").expect("pem")
    }

    #[test]
    fn a_cert_issued_for_a_bare_key_names_its_site_and_no_other() {
        let ca = Authority::create("test CA").expect("ca");
        let site_key = KeyPair::generate().expect("key");
        let public = crate::PublicKey::from_bytes(site_key.public_key().as_bytes()).expect("public key");
        let pem = ca
            .issue(&CertRequest {
                name: "site-a.site.vmi".into(),
                extra_hosts: vec!["127.0.0.1".into(), "localhost".into()],
                public_key: public,
                validity_days: 30,
            })
            .expect("issue");
        let certs = [cert_of(&pem)];
        assert!(peer_is(&certs, "site-a.site.vmi"));
        assert!(peer_is(&certs, "localhost"));
        assert!(peer_is(&certs, "127.0.0.1"));
        assert!(!peer_is(&certs, "site-b.site.vmi"));
        assert!(!peer_is(&certs, "control.vmi"));
        assert!(!peer_is(&[], "site-a.site.vmi"));
        // The issued certificate and the site's own key make a usable server identity.
        let creds = Credentials { cert_pem: pem, key_pem: site_key.to_pem(), ca_pem: ca.cert_pem().to_string() };
        server_config(&creds).expect("server config from a bare-key certificate");
    }

    #[test]
    fn server_names_accept_dns_names_and_ip_literals() {
        assert!(matches!(server_name("site-a.site.vmi"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("not a name"), Err(TrustError::InvalidServerName { .. })));
    }

    #[test]
    fn configs_refuse_garbage_pem() {
        assert!(matches!(client_config("nothing here", None), Err(TrustError::Pem { .. })));
        let ca = Authority::create("test CA").expect("ca");
        let mut creds = ca.credentials_for("control.vmi", &[]).expect("creds");
        creds.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert!(server_config(&creds).is_err());
    }
}
