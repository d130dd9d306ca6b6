//! TLS for coffer's own PostgreSQL connection, with libpq's meaning of `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey` and `sslcrl` (and of their defaults under
//! `~/.postgresql/`), through rustls.
//!
//! The settings are resolved once ([`resolve_params`]): every default is made explicit in
//! the target's parameters, so that our connection and the child processes (pg_dump,
//! pg_restore, psql, which get them as `PGSSL*` variables) use the same files and the same
//! mode.
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | disable | never | — |
//! | allow | only if the server refuses plaintext | as prefer |
//! | prefer (default) | if the server offers it; a failed handshake falls back to plaintext | chain, if a root certificate file exists; else none |
//! | require | always | chain, if a root certificate file exists; else none |
//! | verify-ca | always | chain (a root certificate file is required) |
//! | verify-full | always | chain and host name |
//!
//! As in libpq, a Unix-socket connection never uses TLS, whatever the mode.

use crate::error::Error;
use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// The connection parameters this module owns, and the environment variable each is
/// handed to child processes in.
pub const PARAMS: &[(&str, &str)] = &[
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcrl", "PGSSLCRL"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
];

/// libpq keywords about TLS that coffer cannot honour: refused rather than ignored, since
/// ignoring them would weaken what the user asked for.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "sslpassword",
        "encrypted client keys are not supported (the passphrase would have to reach pg_dump \
         on its command line); decrypt the key (openssl pkey -in KEY -out KEY.plain) and \
         protect the file with mode 0600",
    ),
    (
        "sslcrldir",
        "certificate revocation list directories are not supported; name a file of CRLs with \
         sslcrl",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::usage(format!(
                    "sslmode={other:?}: use disable, allow, prefer, require, verify-ca or \
                     verify-full"
                ))
                .into())
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// How far the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not at all (the handshake's signatures still are): encryption against a passive
    /// listener only.
    None,
    /// The chain up to a trusted root, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Resolved TLS settings of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// The trusted roots: a PEM file (for `sslrootcert=system`, the system's bundle).
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Error::usage(msg).into()
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The system's CA bundle, as OpenSSL (and so a libpq 16+ `sslrootcert=system`) finds it:
/// `SSL_CERT_FILE`, else the distribution's usual place.
fn system_bundle() -> Result<PathBuf> {
    openssl_probe::probe().cert_file.ok_or_else(|| {
        usage(
            "sslrootcert=system: no system CA bundle found (install ca-certificates, or name \
             the file in SSL_CERT_FILE)",
        )
    })
}

fn must_exist(key: &str, p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(usage(format!("{key}={}: not a file", p.display()))),
        Err(e) => Err(usage(format!("{key}={}: {e}", p.display()))),
    }
}

impl TlsSettings {
    /// The settings from a target's parameters (already holding what `PGSSL*` said), with
    /// libpq's defaults for what is unset. `tcp` is false for a Unix socket, where TLS is
    /// never used and so files are not looked for.
    pub fn from_params(params: &[(String, String)], tcp: bool) -> Result<TlsSettings> {
        Self::from_params_in(params, tcp, home().as_deref())
    }

    /// [`TlsSettings::from_params`] with `home` as the home directory.
    fn from_params_in(
        params: &[(String, String)],
        tcp: bool,
        home: Option<&Path>,
    ) -> Result<TlsSettings> {
        let home_file = |name: &str| home.map(|h| h.join(".postgresql").join(name));
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        for (k, why) in UNSUPPORTED {
            if get(k).is_some() {
                return Err(usage(format!("{k}: {why}")));
            }
        }
        let rootcert_param = get("sslrootcert");
        let system_roots = rootcert_param == Some("system");
        let mode = match get("sslmode") {
            Some(m) => SslMode::parse(m)?,
            // libpq 16: the system's roots make verify-full the default.
            None if system_roots => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system_roots && mode != SslMode::VerifyFull {
            return Err(usage(format!(
                "sslmode={} may not be used with sslrootcert=system (anyone can get a \
                 certificate from a public CA for a name they own): use sslmode=verify-full",
                mode.as_str()
            )));
        }
        let versions = [
            ("ssl_min_protocol_version", get("ssl_min_protocol_version")),
            ("ssl_max_protocol_version", get("ssl_max_protocol_version")),
        ];
        for (k, v) in versions {
            if let Some(v) = v {
                if !["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"].contains(&v) {
                    return Err(usage(format!(
                        "{k}={v:?}: use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"
                    )));
                }
            }
        }
        let mut s = TlsSettings {
            mode,
            rootcert: None,
            cert: None,
            key: None,
            crl: None,
            min_version: versions[0].1.map(str::to_string),
            max_version: versions[1].1.map(str::to_string),
        };
        if !tcp || mode == SslMode::Disable {
            // Keep what was said (children get the same), look for nothing.
            s.rootcert = rootcert_param.map(PathBuf::from);
            s.cert = get("sslcert").map(PathBuf::from);
            s.key = get("sslkey").map(PathBuf::from);
            s.crl = get("sslcrl").map(PathBuf::from);
            return Ok(s);
        }

        // Roots: as libpq, an existing root file makes even prefer and require check the
        // chain; verify-* need one. A file named explicitly must exist (libpq would quietly
        // skip the check for prefer/require).
        s.rootcert = match rootcert_param {
            Some("system") => Some(system_bundle()?),
            Some(p) => {
                must_exist("sslrootcert", Path::new(p))?;
                Some(PathBuf::from(p))
            }
            None => match home_file("root.crt") {
                Some(p) if p.is_file() => Some(p),
                default => {
                    if mode.verifies() {
                        let place = default
                            .map(|p| format!("{} does not exist", p.display()))
                            .unwrap_or_else(|| "HOME is not set".into());
                        return Err(usage(format!(
                            "sslmode={} needs the CA certificate(s) to trust: give \
                             sslrootcert=FILE (or PGSSLROOTCERT), use sslrootcert=system for \
                             the system's CAs, or put them in ~/.postgresql/root.crt ({place})",
                            mode.as_str()
                        )));
                    }
                    None
                }
            },
        };
        if s.rootcert.is_some() {
            s.crl = match get("sslcrl") {
                Some(p) => {
                    must_exist("sslcrl", Path::new(p))?;
                    Some(PathBuf::from(p))
                }
                None => home_file("root.crl").filter(|p| p.is_file()),
            };
        } else if let Some(p) = get("sslcrl") {
            // libpq loads CRLs only along with roots; say so rather than ignore them.
            return Err(usage(format!(
                "sslcrl={p}: revocation lists need the CA certificate(s) too (sslrootcert)"
            )));
        }

        // Client certificate: the named one must exist; the default is used if it does.
        s.cert = match get("sslcert") {
            Some(p) => {
                must_exist("sslcert", Path::new(p))?;
                Some(PathBuf::from(p))
            }
            None => home_file("postgresql.crt").filter(|p| p.is_file()),
        };
        if s.cert.is_some() {
            let key = match get("sslkey") {
                Some(p) => PathBuf::from(p),
                None => home_file("postgresql.key").ok_or_else(|| {
                    usage("a client certificate is given but no key: set sslkey (or PGSSLKEY)")
                })?,
            };
            must_exist("sslkey", &key)?;
            check_key_mode(&key)?;
            s.key = Some(key);
        } else if let Some(p) = get("sslkey") {
            return Err(usage(format!(
                "sslkey={p} is given without a client certificate: set sslcert (or PGSSLCERT) too"
            )));
        }
        Ok(s)
    }

    /// The parameters that say exactly these settings (what [`resolve_params`] stores).
    fn to_params(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("sslmode", Some(self.mode.as_str().to_string())),
            ("sslrootcert", path(&self.rootcert)),
            ("sslcert", path(&self.cert)),
            ("sslkey", path(&self.key)),
            ("sslcrl", path(&self.crl)),
            ("ssl_min_protocol_version", self.min_version.clone()),
            ("ssl_max_protocol_version", self.max_version.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// How far a TLS connection under these settings checks the server.
    pub fn check(&self) -> Check {
        match (self.mode, &self.rootcert) {
            (SslMode::VerifyFull, _) => Check::Full,
            (_, Some(_)) => Check::Chain,
            (_, None) => Check::None,
        }
    }

    /// The rustls configuration for these settings.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions = self.protocol_versions()?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| usage(format!("TLS protocol versions: {e}")))?;
        let builder = match self.check() {
            Check::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCheck(provider))),
            check => {
                let roots = self.rootcert.as_deref().expect("a chain check has roots");
                let verifier = self.webpki_verifier(roots, provider)?;
                if check == Check::Full {
                    builder.with_webpki_verifier(verifier)
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                }
            }
        };
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let (chain, der) = load_client_cert(cert, key)?;
                builder.with_client_auth_cert(chain, der).map_err(|e| {
                    usage(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        })
    }

    fn protocol_versions(&self) -> Result<Vec<&'static rustls::SupportedProtocolVersion>> {
        // rustls speaks TLS 1.2 and 1.3 only; PostgreSQL's own minimum is TLS 1.2 since 12.
        let rank = |v: &str| match v {
            "TLSv1.3" => 3,
            "TLSv1.2" => 2,
            _ => 1,
        };
        let min = self.min_version.as_deref().map_or(2, rank).max(2);
        let max = self.max_version.as_deref().map_or(3, rank);
        let mut out = Vec::new();
        if min <= 2 && max >= 2 {
            out.push(&rustls::version::TLS12);
        }
        if max >= 3 {
            out.push(&rustls::version::TLS13);
        }
        if out.is_empty() {
            return Err(usage(format!(
                "ssl_max_protocol_version={}: coffer speaks TLS 1.2 and 1.3 only",
                self.max_version.as_deref().unwrap_or("")
            )));
        }
        Ok(out)
    }

    fn webpki_verifier(
        &self,
        roots: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>> {
        let mut store = rustls::RootCertStore::empty();
        let pem = read(roots, "sslrootcert")?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| usage(format!("sslrootcert={}: {e}", roots.display())))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(usage(format!(
                "sslrootcert={}: no usable CA certificate in it (PEM expected)",
                roots.display()
            )));
        }
        let mut b = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider);
        if let Some(crl) = &self.crl {
            let pem = read(crl, "sslcrl")?;
            let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| usage(format!("sslcrl={}: {e}", crl.display())))?;
            if crls.is_empty() {
                return Err(usage(format!(
                    "sslcrl={}: no revocation list in it (PEM expected)",
                    crl.display()
                )));
            }
            // As libpq (OpenSSL's CRL_CHECK_ALL): every certificate of the chain is checked,
            // and one whose issuer has no list here is refused.
            b = b.with_crls(crls);
        }
        b.build()
            .map_err(|e| usage(format!("sslrootcert={}: {e}", roots.display())))
    }
}

fn read(p: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| usage(format!("{key}={}: {e}", p.display())))
}

/// libpq's rule for a private key file: no access for group or others when it is ours;
/// at most group read when root owns it.
fn check_key_mode(p: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(|e| usage(format!("sslkey={}: {e}", p.display())))?;
    let euid = unsafe { libc::geteuid() };
    let loose = if m.uid() == euid {
        m.mode() & 0o077 != 0
    } else {
        m.uid() == 0 && m.mode() & 0o037 != 0
    };
    if loose {
        return Err(usage(format!(
            "sslkey={}: the private key file has group or world access; it must have mode \
             0600 or less if owned by the current user, or 0640 or less if owned by root",
            p.display()
        )));
    }
    Ok(())
}

fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pem = read(cert, "sslcert")?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| usage(format!("sslcert={}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(usage(format!(
            "sslcert={}: no certificate in it (PEM expected)",
            cert.display()
        )));
    }
    let pem = read(key, "sslkey")?;
    if String::from_utf8_lossy(&pem).contains("ENCRYPTED") {
        return Err(usage(format!(
            "sslkey={}: the key is encrypted; {}",
            key.display(),
            UNSUPPORTED[0].1
        )));
    }
    let k = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        usage(format!(
            "sslkey={}: no private key in it ({e})",
            key.display()
        ))
    })?;
    Ok((chain, k))
}

/// Check and complete the TLS parameters of a target, making libpq's defaults explicit.
/// Afterwards `params` says exactly what our connection and the child processes use.
pub fn resolve_params(params: &mut Vec<(String, String)>, tcp: bool) -> Result<()> {
    resolve_params_in(params, tcp, home().as_deref())
}

fn resolve_params_in(
    params: &mut Vec<(String, String)>,
    tcp: bool,
    home: Option<&Path>,
) -> Result<()> {
    let s = TlsSettings::from_params_in(params, tcp, home)?;
    params.retain(|(k, _)| !PARAMS.iter().any(|(p, _)| p == k));
    params.extend(s.to_params().into_iter().map(|(k, v)| (k.to_string(), v)));
    Ok(())
}

/// No check of the certificate (sslmode=require/prefer without roots), but the handshake's
/// signatures are verified, so the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: webpki's whole check less the host name. `WebPkiServerVerifier` checks the
/// chain (and revocation) first and the name last, so a name error means everything else
/// passed. (tests/pg_tls.rs holds a certificate from another CA for another name to this.)
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What became of the TLS attempt of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No handshake was started (TLS off, or the server does not offer it).
    NotTried,
    /// A handshake was started and has not finished (or the connection broke in it).
    Started,
    Done,
    Failed,
}

/// [`tokio_postgres_rustls::MakeRustlsConnect`], recording whether the handshake was
/// attempted and how it went, so that `prefer` can tell "the server has no TLS" from "the
/// handshake failed" and say which it used.
#[derive(Clone)]
pub struct Connector {
    inner: tokio_postgres_rustls::MakeRustlsConnect,
    state: Arc<AtomicU8>,
}

impl Connector {
    pub fn new(config: ClientConfig) -> Connector {
        Connector {
            inner: tokio_postgres_rustls::MakeRustlsConnect::new(config),
            state: Arc::new(AtomicU8::new(Outcome::NotTried as u8)),
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self.state.load(Ordering::SeqCst) {
            x if x == Outcome::Started as u8 => Outcome::Started,
            x if x == Outcome::Done as u8 => Outcome::Done,
            x if x == Outcome::Failed as u8 => Outcome::Failed,
            _ => Outcome::NotTried,
        }
    }
}

impl<S> postgres::tls::MakeTlsConnect<S> for Connector
where
    tokio_postgres_rustls::MakeRustlsConnect: postgres::tls::MakeTlsConnect<S>,
{
    type Stream =
        <tokio_postgres_rustls::MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = Recording<
        <tokio_postgres_rustls::MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::TlsConnect,
    >;
    type Error =
        <tokio_postgres_rustls::MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Recording {
            inner: self.inner.make_tls_connect(domain)?,
            state: self.state.clone(),
        })
    }
}

pub struct Recording<T> {
    inner: T,
    state: Arc<AtomicU8>,
}

impl<S, T> postgres::tls::TlsConnect<S> for Recording<T>
where
    T: postgres::tls::TlsConnect<S>,
{
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = RecordingFuture<T::Future>;

    fn connect(self, stream: S) -> Self::Future {
        self.state.store(Outcome::Started as u8, Ordering::SeqCst);
        RecordingFuture {
            inner: Box::pin(self.inner.connect(stream)),
            state: self.state,
        }
    }
}

pub struct RecordingFuture<F> {
    inner: std::pin::Pin<Box<F>>,
    state: Arc<AtomicU8>,
}

impl<F, T, E> std::future::Future for RecordingFuture<F>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let r = self.inner.as_mut().poll(cx);
        if let std::task::Poll::Ready(res) = &r {
            let o = if res.is_ok() {
                Outcome::Done
            } else {
                Outcome::Failed
            };
            self.state.store(o as u8, Ordering::SeqCst);
        }
        r
    }
}

/// A hint for a failed handshake, from the rustls error under a connection error.
pub fn handshake_hint(e: &postgres::Error, s: &TlsSettings, host: &str) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(x) = src {
        let tls = x
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| x.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            let roots = s
                .rootcert
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Some(match tls {
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => format!(
                    "the server's certificate is not signed by a CA in {roots} (sslrootcert)"
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "the server's certificate is not made out to {host:?}; sslmode=verify-full \
                     checks the host name (connect by a name the certificate holds)"
                ),
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                    "the server's certificate is revoked (sslcrl)".to_string()
                }
                rustls::Error::InvalidCertificate(_) => {
                    format!(
                        "the server's certificate does not pass the check of sslmode={}",
                        s.mode.as_str()
                    )
                }
                _ => format!("TLS handshake failed (sslmode={})", s.mode.as_str()),
            });
        }
        src = x.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn modes_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let home = Some(dir.path());
        let from = |p: &[(&str, &str)], tcp| TlsSettings::from_params_in(&params(p), tcp, home);
        let s = from(&[], true).unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(s.check(), Check::None);
        let s = from(&[("sslmode", "require")], true).unwrap();
        assert_eq!(s.check(), Check::None);
        // verify-* need roots; with none anywhere they are refused before connecting.
        let e = from(&[("sslmode", "verify-ca")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("root.crt"), "{e}");
        // Over a Unix socket nothing is looked for.
        from(&[("sslmode", "verify-full")], false).unwrap();
        // A default root file makes require check the chain, as libpq.
        let pg = dir.path().join(".postgresql");
        std::fs::create_dir(&pg).unwrap();
        std::fs::write(pg.join("root.crt"), "").unwrap();
        let s = from(&[("sslmode", "require")], true).unwrap();
        assert_eq!(s.rootcert, Some(pg.join("root.crt")));
        assert_eq!(s.check(), Check::Chain);
        let s = from(&[("sslmode", "verify-full")], true).unwrap();
        assert_eq!(s.check(), Check::Full);
        // Named files must exist.
        let e = from(&[("sslrootcert", "/nonexistent/ca")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca"), "{e}");
        assert!(SslMode::parse("requir").is_err());
        assert!(from(&[("sslpassword", "x")], true).is_err());
        // system: verify-full by default, weaker modes refused.
        if system_bundle().is_ok() {
            let s = from(&[("sslrootcert", "system")], true).unwrap();
            assert_eq!(s.mode, SslMode::VerifyFull);
            assert_eq!(s.rootcert, Some(system_bundle().unwrap()));
            assert!(from(&[("sslrootcert", "system"), ("sslmode", "require")], true).is_err());
        }
    }

    #[test]
    fn resolved_params_say_everything() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "").unwrap();
        let mut p = params(&[
            ("sslrootcert", ca.to_str().unwrap()),
            ("application_name", "x"),
        ]);
        resolve_params_in(&mut p, true, Some(dir.path())).unwrap();
        assert!(p.contains(&("sslmode".into(), "prefer".into())));
        assert!(p.contains(&("sslrootcert".into(), ca.display().to_string())));
        assert!(p.contains(&("application_name".into(), "x".into())));
        let again = p.clone();
        resolve_params_in(&mut p, true, Some(dir.path())).unwrap();
        assert_eq!(p, again);
    }
}
