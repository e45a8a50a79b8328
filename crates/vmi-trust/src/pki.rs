//! The provider CA, the keys machines hold and the certificates the CA issues them.
//!
//! A site generates its key pair itself and sends only the public key when it enrolls; the CA signs a
//! certificate for that bare key ([`Authority::issue`]), so the site's private key never leaves it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, DnsName, UnixTime, pem::PemObject};

use crate::TrustError;

/// The common name of the CA that [`Authority::load_or_create`] keeps on disk.
///
/// It is fixed because reloading the CA rebuilds its issuer name from it (reading it back from the
/// certificate would need an X.509 parser); [`Authority::load_or_create`] checks the pair still fits.
pub const AUTHORITY_NAME: &str = "Seed VMI provider CA";

/// How long a certificate from [`Authority::credentials_for`] is valid.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;

/// How long the provider CA itself is valid: there is no rotation yet, so long enough never to lapse.
const AUTHORITY_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How far back certificates start, so a peer whose clock runs a little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// File names in a CA directory and a credentials directory.
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// Length of an uncompressed P-256 point: 0x04, then X and Y of 32 bytes each.
const P256_POINT_LEN: usize = 65;

/// The raw P-256 (ECDSA) public key of a machine: an uncompressed point, 65 bytes starting with 0x04.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; P256_POINT_LEN]);

impl PublicKey {
    /// Takes the 65 bytes of an uncompressed P-256 point, as a site sends them when it enrolls.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let point: [u8; P256_POINT_LEN] =
            bytes.try_into().map_err(|_| TrustError::PublicKey { len: bytes.len(), first: String::new() })?;
        if point[0] != 0x04 {
            return Err(TrustError::PublicKey { len: bytes.len(), first: format!(", first byte 0x{:02x}", point[0]) });
        }
        Ok(Self(point))
    }

    /// The 65 bytes of the point.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..9] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

// rcgen signs a certificate for anything that can state its SubjectPublicKeyInfo; for P-256 that is
// the algorithm identifier plus the raw point, so a bare key needs no CSR and no X.509 parser.
impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A machine's ECDSA P-256 key pair.
pub struct KeyPair(rcgen::KeyPair);

impl KeyPair {
    /// Generates a fresh P-256 key pair.
    pub fn generate() -> Result<Self, TrustError> {
        Ok(Self(rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?))
    }

    /// The public half, as sent when enrolling.
    pub fn public_key(&self) -> PublicKey {
        let mut point = [0u8; P256_POINT_LEN];
        // rcgen's raw public key of a P-256 pair is exactly the uncompressed point.
        point.copy_from_slice(self.0.public_key_raw());
        PublicKey(point)
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// Reads a PKCS#8 PEM P-256 key, as written by [`KeyPair::to_pem`].
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let key = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| TrustError::Pem { what: "the private key".into(), reason: e.to_string() })?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(TrustError::Pem { what: "the private key".into(), reason: "not an ECDSA P-256 key".into() });
        }
        Ok(Self(key))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_tuple("KeyPair").field(&self.public_key()).finish()
    }
}

/// What the CA needs to issue a machine's certificate.
#[derive(Clone, Debug)]
pub struct CertRequest {
    /// The machine's identity name, e.g. `site-a.site.vmi` ([`crate::site_name`]) or [`crate::CONTROL_NAME`].
    pub name: String,
    /// Other names the machine is reachable at (IP literals become IP SANs, the rest DNS SANs),
    /// e.g. `127.0.0.1` so a URL naming the address verifies too.
    pub extra_hosts: Vec<String>,
    /// The machine's public key; its private key stays with it.
    pub public_key: PublicKey,
    /// Days from now the certificate is valid for.
    pub validity_days: u32,
}

/// What a service holds to speak TLS: its certificate, its private key and the CA it trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The service's certificate (PEM).
    pub cert_pem: String,
    /// The service's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The provider CA's certificate (PEM): the only root trusted for peers.
    pub ca_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl Credentials {
    /// Writes `cert.pem`, `key.pem` (0600) and `ca.pem` into `dir`, creating it with 0700 if missing.
    pub fn save(&self, dir: &Path) -> Result<(), TrustError> {
        ensure_private_dir(dir)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_pem, 0o644)
    }

    /// Reads what [`Credentials::save`] wrote; refuses a `key.pem` that group or others can read.
    pub fn load(dir: &Path) -> Result<Self, TrustError> {
        Ok(Self {
            key_pem: read_private_file(&dir.join(KEY_FILE))?,
            cert_pem: read_file(&dir.join(CERT_FILE))?,
            ca_pem: read_file(&dir.join(CA_CERT_FILE))?,
        })
    }
}

/// The provider CA: it names every machine by signing its certificate.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a new CA in memory, with a fresh key.
    pub fn create(common_name: &str) -> Result<Self, TrustError> {
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = authority_params(common_name);
        set_validity(&mut params, AUTHORITY_VALIDITY);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self { cert_pem, issuer: Issuer::new(params, key) })
    }

    /// Loads the CA kept in `dir` (`ca.pem`, `ca.key`), or creates it there on first start.
    ///
    /// `dir` is created with mode 0700 when missing; `ca.key` is written 0600 and refused when group
    /// or others can read it. A key that does not sign for the certificate beside it is refused.
    pub fn load_or_create(dir: &Path) -> Result<Self, TrustError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            let key_pem = read_private_file(&key_path)?;
            let cert_pem = read_file(&cert_path)?;
            let key = rcgen::KeyPair::from_pem(&key_pem)
                .map_err(|e| TrustError::Pem { what: key_path.display().to_string(), reason: e.to_string() })?;
            let authority = Self { cert_pem, issuer: Issuer::new(authority_params(AUTHORITY_NAME), key) };
            if !authority.signs_for_own_cert()? {
                return Err(TrustError::AuthorityMismatch { cert: cert_path, key: key_path });
            }
            tracing::debug!(dir = %dir.display(), "loaded the provider CA");
            return Ok(authority);
        }
        ensure_private_dir(dir)?;
        let authority = Self::create(AUTHORITY_NAME)?;
        // The key first: a certificate without its key would be useless, a key without its
        // certificate is refused on the next start rather than silently replaced.
        write_file(&key_path, &authority.issuer.key().serialize_pem(), 0o600)?;
        write_file(&cert_path, &authority.cert_pem, 0o644)?;
        tracing::info!(dir = %dir.display(), "created the provider CA");
        Ok(authority)
    }

    /// The CA's certificate (PEM), which every machine trusts as its only root.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate (PEM) for `request.public_key`, naming `request.name`.
    ///
    /// The certificate is good for both ends of mutual TLS (EKU serverAuth and clientAuth), is not a
    /// CA, has CN = name and SANs = name plus the extra hosts.
    ///
    /// An extra host in the identity namespace (`*.vmi`) is refused: a certificate names exactly one identity.
    pub fn issue(&self, request: &CertRequest) -> Result<String, TrustError> {
        DnsName::try_from(request.name.as_str())
            .map_err(|_| TrustError::InvalidServerName { name: request.name.clone() })?;
        if let Some(reserved) = request.extra_hosts.iter().find(|h| crate::identity::is_identity_name(h)) {
            return Err(TrustError::ReservedName { name: reserved.clone() });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, request.name.as_str());
        params.subject_alt_names = std::iter::once(&request.name)
            .chain(&request.extra_hosts)
            .map(|host| san(host))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, Duration::from_secs(u64::from(request.validity_days) * 24 * 3600));
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }

    /// Generates a key pair and issues it a certificate naming `name` (valid [`DEFAULT_VALIDITY_DAYS`]):
    /// how the control service equips itself, and how tests equip sites.
    pub fn credentials_for(&self, name: &str, extra_hosts: &[&str]) -> Result<Credentials, TrustError> {
        let key = KeyPair::generate()?;
        let cert_pem = self.issue(&CertRequest {
            name: name.to_string(),
            extra_hosts: extra_hosts.iter().map(|h| h.to_string()).collect(),
            public_key: key.public_key(),
            validity_days: DEFAULT_VALIDITY_DAYS,
        })?;
        Ok(Credentials { cert_pem, key_pem: key.to_pem(), ca_pem: self.cert_pem.clone() })
    }

    /// Whether a certificate this CA issues now verifies against its own certificate: the check that
    /// a key and a certificate loaded from disk belong together (same key, same issuer name).
    fn signs_for_own_cert(&self) -> Result<bool, TrustError> {
        let probe_key = KeyPair::generate()?;
        let probe_pem = self.issue(&CertRequest {
            name: "probe.vmi".into(),
            extra_hosts: Vec::new(),
            public_key: probe_key.public_key(),
            validity_days: 1,
        })?;
        let ca = first_cert(&self.cert_pem, "the CA certificate")?;
        let probe = first_cert(&probe_pem, "the probe certificate")?;
        let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else { return Ok(false) };
        let Ok(end_entity) = webpki::EndEntityCert::try_from(&probe) else { return Ok(false) };
        Ok(end_entity
            .verify_for_usage(
                &[webpki::ring::ECDSA_P256_SHA256],
                &[anchor],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .is_ok())
    }
}

/// The parameters that make up the CA's issuer identity; rebuilt identically when reloading.
fn authority_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    // Path length 0: the CA signs machines, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// One SAN: an IP address when the host parses as one, a DNS name otherwise.
fn san(host: &str) -> Result<SanType, TrustError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    DnsName::try_from(host).map_err(|_| TrustError::InvalidServerName { name: host.to_string() })?;
    Ok(SanType::DnsName(host.try_into()?))
}

/// A random 16-byte serial: serials must differ between certificates, and rcgen's default (a hash of
/// the public key) repeats when the same key is certified twice.
fn random_serial() -> Result<SerialNumber, TrustError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider().secure_random.fill(&mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f; // positive, as RFC 5280 requires
    bytes[0] |= 0x01; // and never starting with a zero byte, so it keeps its full length
    Ok(SerialNumber::from_slice(&bytes))
}

/// Sets `params` valid from [`CLOCK_SKEW`] ago until `lifetime` from now. (Computed from the epoch
/// through rcgen's own date type, so this crate needs no date crate of its own.)
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
}

/// The first certificate in a PEM text.
pub(crate) fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, TrustError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TrustError::Pem { what: what.to_string(), reason: e.to_string() })
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
fn ensure_private_dir(dir: &Path) -> Result<(), TrustError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| TrustError::File {
        action: "creating directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with `mode`, through a temporary file renamed into place, so a
/// crash never leaves half a key and the key is never readable by others, not even for a moment.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TrustError> {
    let file_error = |source| TrustError::File { action: "writing", path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(e)),
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(file_error)?;
    // The umask may have taken bits away from `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(file_error)?;
    file.write_all(contents.as_bytes()).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    fs::rename(&tmp, path).map_err(file_error)
}

fn read_file(path: &Path) -> Result<String, TrustError> {
    fs::read_to_string(path).map_err(|source| TrustError::File { action: "reading", path: path.to_path_buf(), source })
}

/// Reads a private key file, refusing it when group or others have any access to it.
fn read_private_file(path: &Path) -> Result<String, TrustError> {
    let meta = fs::metadata(path).map_err(|source| TrustError::File {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TrustError::KeyFileExposed { path: path.to_path_buf(), mode });
    }
    read_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let dir = std::env::temp_dir().join(format!("vmi-trust-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_ca_is_created_once_and_loaded_after() {
        let tmp = TempDir::new("ca");
        let dir = tmp.0.join("nested").join("ca");
        let first = Authority::load_or_create(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        let second = Authority::load_or_create(&dir).expect("load");
        assert_eq!(first.cert_pem(), second.cert_pem(), "the same CA both times");

        // What the reloaded CA issues verifies against the CA created first.
        let creds = second.credentials_for("site-a.site.vmi", &[]).expect("issue");
        let leaf = first_cert(&creds.cert_pem, "leaf").expect("leaf");
        let ca = first_cert(first.cert_pem(), "ca").expect("ca");
        let anchor = webpki::anchor_from_trusted_cert(&ca).expect("anchor");
        webpki::EndEntityCert::try_from(&leaf)
            .expect("parse")
            .verify_for_usage(
                &[webpki::ring::ECDSA_P256_SHA256],
                &[anchor],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .expect("chains to the first CA");
    }

    #[test]
    fn a_certificate_names_one_identity_only() {
        let ca = Authority::create("test").expect("CA");
        for reserved in ["control.vmi", "site-b.site.vmi", "Site-B.Site.VMI."] {
            match ca.credentials_for("site-a.site.vmi", &["127.0.0.1", reserved]) {
                Err(TrustError::ReservedName { name }) => assert_eq!(name, reserved),
                other => panic!("{reserved}: {other:?}"),
            }
        }
        ca.credentials_for("site-a.site.vmi", &["127.0.0.1", "edge-a.example.net"]).expect("plain hosts");
    }

    #[test]
    fn an_exposed_ca_key_is_refused() {
        let tmp = TempDir::new("exposed");
        Authority::load_or_create(&tmp.0).expect("create");
        let key = tmp.0.join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        match Authority::load_or_create(&tmp.0) {
            Err(e @ TrustError::KeyFileExposed { .. }) => {
                let message = e.to_string();
                assert!(message.contains("ca.key") && message.contains("644"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_that_does_not_fit_the_ca_cert_is_refused() {
        let tmp = TempDir::new("mismatch");
        Authority::load_or_create(&tmp.0).expect("create");
        let other = KeyPair::generate().expect("key");
        write_file(&tmp.0.join(CA_KEY_FILE), &other.to_pem(), 0o600).expect("write");
        assert!(matches!(Authority::load_or_create(&tmp.0), Err(TrustError::AuthorityMismatch { .. })));
    }

    #[test]
    fn credentials_round_trip_with_a_private_key_file() {
        let tmp = TempDir::new("creds");
        let dir = tmp.0.join("site");
        let ca = Authority::create("test CA").expect("ca");
        let creds = ca.credentials_for("site-a.site.vmi", &["127.0.0.1"]).expect("creds");
        creds.save(&dir).expect("save");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(Credentials::load(&dir).expect("load"), creds);
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(Credentials::load(&dir), Err(TrustError::KeyFileExposed { .. })));
        assert!(!format!("{creds:?}").contains("PRIVATE KEY"), "Debug never shows the key");
    }

    #[test]
    fn public_keys_are_uncompressed_p256_points() {
        let key = KeyPair::generate().expect("key");
        let public = key.public_key();
        assert_eq!(public.as_bytes().len(), 65);
        assert_eq!(PublicKey::from_bytes(public.as_bytes()).expect("round trip"), public);
        assert!(matches!(PublicKey::from_bytes(&public.as_bytes()[..64]), Err(TrustError::PublicKey { len: 64, .. })));
        let mut compressed = public.as_bytes().to_vec();
        compressed[0] = 0x02;
        assert!(PublicKey::from_bytes(&compressed).is_err());
        let reloaded = KeyPair::from_pem(&key.to_pem()).expect("pem round trip");
        assert_eq!(reloaded.public_key(), public);
        assert!(KeyPair::from_pem("not a key").is_err());
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let ca = Authority::create("test CA").expect("ca");
        let key = KeyPair::generate().expect("key");
        let request = CertRequest {
            name: "site-a.site.vmi".into(),
            extra_hosts: vec![],
            public_key: key.public_key(),
            validity_days: 1,
        };
        assert_ne!(ca.issue(&request).expect("one"), ca.issue(&request).expect("two"));
        let bad = CertRequest { name: "not a name".into(), ..request };
        assert!(matches!(ca.issue(&bad), Err(TrustError::InvalidServerName { .. })));
    }
}
