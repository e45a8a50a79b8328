//! The one error type of this crate.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong naming machines, issuing certificates, building TLS configs or dialling.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file or directory of the CA or of a service's credentials could not be read, written or created.
    #[error("{action} {path}")]
    File {
        /// What was being done ("reading", "writing", "creating directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A private key file that group or others can read: refused rather than used.
    #[error("{path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600 it)")]
    KeyFileExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// PEM text that does not hold what it should.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// What the PEM was meant to be ("the CA certificate", "/dir/key.pem", ...).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A public key sent for enrollment that is not an uncompressed P-256 point.
    #[error("a P-256 public key is 65 bytes starting with 0x04 (uncompressed point); got {len} bytes{first}")]
    PublicKey {
        /// The length received.
        len: usize,
        /// The first byte when the length was right, for the message.
        first: String,
    },
    /// A site id that cannot become a DNS label.
    #[error("invalid site id {id:?}: {reason}")]
    InvalidSiteId {
        /// The id as given.
        id: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A name that can be neither a DNS name nor an IP address.
    #[error("invalid server name {name:?}: neither a DNS name nor an IP address")]
    InvalidServerName {
        /// The name as given.
        name: String,
    },
    /// An extra host that is a machine identity name (`*.vmi`): only the name a certificate is issued for may be one.
    #[error("{name:?} is a machine identity name (*.vmi) and cannot be an extra host of a certificate")]
    ReservedName {
        /// The name as given.
        name: String,
    },
    /// rcgen refused to build a key or a certificate.
    #[error("certificate generation failed")]
    Certificate(#[from] rcgen::Error),
    /// The CA key on disk does not sign for the CA certificate on disk.
    #[error("{key} does not belong to {cert}: the CA files were mixed up")]
    AuthorityMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },
    /// rustls refused a configuration (bad key, bad certificate).
    #[error("TLS configuration refused")]
    TlsConfig(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client certificate verifier refused the CA")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The TCP connection could not be made.
    #[error("connecting to {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection was made but the TLS handshake failed (wrong CA, wrong name, ...).
    #[error("TLS handshake with {addr} as {server_name:?}")]
    Handshake {
        /// The address dialled.
        addr: String,
        /// The name the certificate had to carry.
        server_name: String,
        /// The cause (rustls' error inside an io::Error).
        #[source]
        source: std::io::Error,
    },
    /// A TLS URL (https, wss) with no TLS configuration to dial it with.
    #[error("{addr} needs TLS but no CA is configured to verify it")]
    NoTlsConfig {
        /// The address to dial.
        addr: String,
    },
    /// A listen address that would expose plain HTTP beyond this machine.
    #[error(
        "refusing to listen on {addr} without TLS: plain HTTP is only served on loopback \
         (127.0.0.0/8, ::1); give the service TLS credentials or listen on 127.0.0.1"
    )]
    PlainListenNotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
}

impl TrustError {
    /// Whether the network failed rather than trust: the connection could not be made, or it broke during the
    /// handshake (reset, closed, timed out). Dialling again may work; a certificate rustls refused will not.
    pub fn is_transient(&self) -> bool {
        match self {
            TrustError::Connect { .. } => true,
            // rustls reports what it refuses as InvalidData; everything else is the transport's.
            TrustError::Handshake { source, .. } => source.kind() != std::io::ErrorKind::InvalidData,
            _ => false,
        }
    }
}
