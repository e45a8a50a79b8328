//! Seed VMI trust: who is who between the machines, and the guarded door every service listens behind.
//!
//! # Identities
//! Every machine is named by a DNS-style identity that its certificate carries as CN and SAN:
//! the control service is [`CONTROL_NAME`] (`control.vmi`), site `S` is [`site_name`]`(S)` =
//! `S.site.vmi`. A service decides who called by asking whether the caller's CA-signed certificate
//! names someone ([`peer_is`], `Peer::is`), never by parsing certificates itself.
//!
//! # The provider CA
//! [`Authority`] is the provider's CA, created on first start in a directory (`ca.pem`, `ca.key`
//! 0600, the directory 0700). It issues each machine a certificate good for both ends of mutual
//! TLS. A site generates its own [`KeyPair`] and sends only its [`PublicKey`] to enroll, so its
//! private key never leaves it. What a service keeps is its [`Credentials`] (certificate, key, CA).
//!
//! # TLS
//! [`server_config`] and [`client_config`] trust the provider CA and nothing else (TLS 1.3, ring).
//! Servers accept clients without certificates (browsers, terminals, authenticated by token) and
//! verify those that present one. [`connect`] and [`dial`] check the server's certificate names the
//! peer expected: an identity name (`site-b.site.vmi`), or the IP or host of a URL.
//!
//! # Listen rules (feature `server`)
//! `serve` serves an axum router behind: TLS with optional client certificates; plain HTTP only
//! for loopback peers (the browser demo on this machine; a plain connection from anywhere else is
//! closed); caps on connections in total and per IP; a header-read timeout against slow clients;
//! graceful shutdown. `check_listen` refuses at start a non-loopback address without TLS.
//!
//! # Limits
//! [`Lockout`] and [`RateLimit`] bound guesses and floods per key, with bounded memory and time
//! passed in by the caller.

#[cfg(feature = "server")]
pub mod browser;
mod error;
mod identity;
mod limits;
mod pki;
#[cfg(feature = "server")]
mod server;
mod tls;

pub use error::TrustError;
pub use identity::{CONTROL_NAME, is_identity_name, site_name};
pub use limits::{Lockout, RateLimit};
pub use pki::{AUTHORITY_NAME, Authority, CertRequest, Credentials, DEFAULT_VALIDITY_DAYS, KeyPair, PublicKey};
#[cfg(feature = "server")]
pub use server::{ConnectionLimits, Peer, check_listen, serve};
pub use tls::{Stream, client_config, connect, dial, peer_is, server_config};

/// rustls' configs, re-exported for the same reason.
pub use rustls::{ClientConfig, ServerConfig};
/// The certificate type peers are presented as, re-exported so callers need not name rustls-pki-types.
pub use rustls_pki_types::CertificateDer;
