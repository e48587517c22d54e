//! TLS: the connection string's `sslmode` and `sslrootcert`, and the rustls connector that
//! carries them out.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` (and refuses the others and
//! `sslrootcert` as unknown), so both are taken out of the connection string here, in either of
//! its forms, before tokio-postgres parses the rest. The modes mean what they mean to libpq:
//!
//! | `sslmode` | encrypted | certificate chain checked | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `prefer` (the default) | if the server offers it | only if `sslrootcert` is given | no |
//! | `require` | yes | only if `sslrootcert` is given | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The chain is checked against the certificates of the PEM file `sslrootcert`, else (or with
//! `sslrootcert=system`) the platform's root certificates.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{OtherError, SignatureScheme};
use tokio_postgres::config::SslMode as PostgresSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{PersistentError, Result};

/// The connection string's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            // libpq's `allow` tries without TLS first; tokio-postgres cannot, so it prefers TLS.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(config_error(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether to insist.
    pub(super) fn for_tokio_postgres(self) -> PostgresSslMode {
        match self {
            Self::Disable => PostgresSslMode::Disable,
            Self::Prefer => PostgresSslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => PostgresSslMode::Require,
        }
    }
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TlsOptions {
    pub(super) mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the platform's roots.
    pub(super) root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or libpq's `key=value`
/// pairs); returns the rest, for tokio-postgres, and the TLS settings.
pub(super) fn split_tls_options(url: &str) -> Result<(String, TlsOptions)> {
    let (rest, pairs) = if url.contains("://") {
        split_url(url)
    } else {
        split_key_values(url)
    };
    let mut options = TlsOptions::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => options.mode = SslMode::parse(&value)?,
            _ => options.root_cert = Some(value),
        }
    }
    Ok((rest, options))
}

fn is_tls_key(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// `postgres://...?a=1&sslmode=require`: the query parameters are `&`-separated and
/// percent-encoded.
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for parameter in query.split('&') {
        match parameter.split_once('=') {
            Some((key, value)) if is_tls_key(key) => {
                taken.push((key.to_owned(), percent_decode(value)));
            }
            _ => kept.push(parameter),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `host=h sslmode='verify-full'`: whitespace-separated `key = value` pairs, a value optionally
/// in single quotes, `\` escaping the next character. Pairs are cut out by their byte ranges,
/// so the rest reaches tokio-postgres exactly as written; text that does not follow the syntax
/// is left for tokio-postgres to report.
fn split_key_values(text: &str) -> (String, Vec<(String, String)>) {
    let mut rest = String::with_capacity(text.len());
    let mut taken = Vec::new();
    let mut kept_from = 0;
    let mut pairs = KeyValues { text, at: 0 };
    while let Some((range, key, value)) = pairs.next_pair() {
        if is_tls_key(&key) {
            rest.push_str(&text[kept_from..range.start]);
            kept_from = range.end;
            taken.push((key, value));
        }
    }
    rest.push_str(&text[kept_from..]);
    (rest, taken)
}

/// A cursor over libpq's `key=value` syntax.
struct KeyValues<'a> {
    text: &'a str,
    at: usize,
}

impl KeyValues<'_> {
    /// The next pair: its byte range, key and unescaped value; `None` at the end or at text
    /// that is not a pair.
    fn next_pair(&mut self) -> Option<(std::ops::Range<usize>, String, String)> {
        self.skip_whitespace();
        let start = self.at;
        let key_end = self.text[start..]
            .find(|c: char| c == '=' || c.is_whitespace())
            .map_or(self.text.len(), |offset| start + offset);
        let key = self.text[start..key_end].to_owned();
        self.at = key_end;
        self.skip_whitespace();
        if key.is_empty() || !self.text[self.at..].starts_with('=') {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        let value = self.value()?;
        Some((start..self.at, key, value))
    }

    fn value(&mut self) -> Option<String> {
        let mut chars = self.text[self.at..].char_indices().peekable();
        let quoted = chars.next_if(|&(_, c)| c == '\'').is_some();
        let mut value = String::new();
        while let Some((offset, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '\'' if quoted => {
                    self.at += offset + 1;
                    return Some(value);
                }
                c if c.is_whitespace() && !quoted => {
                    self.at += offset;
                    return Some(value);
                }
                c => value.push(c),
            }
        }
        if quoted {
            return None; // unterminated: tokio-postgres says so
        }
        self.at = self.text.len();
        Some(value)
    }

    fn skip_whitespace(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }
}

/// The connector for `options`. Reads `sslrootcert` (or the platform's roots) only if the
/// certificate chain is to be checked.
pub(super) fn connector(options: &TlsOptions) -> Result<MakeRustlsConnect> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange, which
    // only aws-lc-rs has (and aws-lc-rs needs cmake to build: see the workspace's Cargo.toml).
    // It is still rustls's provider for the `ring` feature (rustls allows it the same way).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let checks = match (options.mode, &options.root_cert) {
        (SslMode::Disable, _) => Checks::Nothing,
        // As libpq: a root certificate given makes `prefer` and `require` check the chain.
        (SslMode::Prefer | SslMode::Require, None) => Checks::Nothing,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(_)) => Checks::Chain,
        (SslMode::VerifyCa, None) => Checks::Chain,
        (SslMode::VerifyFull, _) => Checks::ChainAndName,
    };
    let (chain, roots) = match checks {
        Checks::Nothing => (None, String::new()),
        Checks::Chain | Checks::ChainAndName => {
            let (store, described) = root_store(options.root_cert.as_deref())?;
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(&provider))
                    .build()
                    .map_err(|error| {
                        config_error(format!("no usable root certificate: {error}"))
                    })?;
            (Some(verifier), described)
        }
    };
    let verifier = Verifier {
        checks,
        mode: options.mode,
        chain,
        roots,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| config_error(format!("TLS cannot be set up: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The trusted roots, and how to name them in errors.
fn root_store(root_cert: Option<&str>) -> Result<(RootCertStore, String)> {
    let mut store = RootCertStore::empty();
    match root_cert {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(config_error(format!(
                    "no root certificates found on this system ({} errors); name a PEM file \
                     with sslrootcert",
                    found.errors.len()
                )));
            }
            Ok((store, "the system's root certificates".to_owned()))
        }
        Some(path) => {
            let unreadable = |error: &dyn fmt::Display| {
                config_error(format!("cannot read sslrootcert {path:?}: {error}"))
            };
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                let certificate = certificate.map_err(|e| unreadable(&e))?;
                store.add(certificate).map_err(|e| unreadable(&e))?;
            }
            if store.is_empty() {
                return Err(unreadable(&"it holds no PEM certificate"));
            }
            Ok((store, format!("the certificates of sslrootcert {path:?}")))
        }
    }
}

pub(super) fn config_error(reason: String) -> PersistentError {
    PersistentError::Config { reason }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Encrypt, trusting whatever certificate the server shows.
    Nothing,
    /// The chain must lead to a trusted root; any host name.
    Chain,
    /// The chain, and the certificate must name the host connected to.
    ChainAndName,
}

/// Checks the server's certificate as `checks` says. The handshake's signatures are checked
/// in every mode: the server holds the key of the certificate it shows.
#[derive(Debug)]
struct Verifier {
    checks: Checks,
    mode: SslMode,
    /// Present unless `checks` is [`Checks::Nothing`].
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The roots, as errors name them.
    roots: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let verified =
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verified {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.checks == Checks::Chain => Ok(ServerCertVerified::assertion()),
            // `Other`, not `InvalidCertificate(Other)`: only the former shows our message as is.
            Err(rustls::Error::InvalidCertificate(error)) => {
                Err(rustls::Error::Other(OtherError(Arc::new(FailedCheck {
                    check: self.check_that_failed(&error),
                    mode: self.mode,
                    host: server_name.to_str().into_owned(),
                    roots: self.roots.clone(),
                    error,
                }))))
            }
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl Verifier {
    fn check_that_failed(&self, error: &CertificateError) -> &'static str {
        match error {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the host name check"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "the validity period check",
            _ => "the certificate chain check",
        }
    }
}

/// A certificate check that failed, as the connect error shows it.
#[derive(Debug)]
struct FailedCheck {
    check: &'static str,
    mode: SslMode,
    host: String,
    roots: String,
    error: CertificateError,
}

impl fmt::Display for FailedCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sslmode={}) failed for host {:?}, trusting {}: {}",
            self.check,
            self.mode.name(),
            self.host,
            self.roots,
            self.error
        )
    }
}

impl std::error::Error for FailedCheck {}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsOptions) {
        split_tls_options(url).unwrap()
    }

    #[test]
    fn tls_options_are_taken_out_of_urls() {
        let (rest, options) =
            split("postgres://u@h/db?sslmode=verify-full&application_name=a&sslrootcert=%2Fca.pem");
        assert_eq!(rest, "postgres://u@h/db?application_name=a");
        assert_eq!(options.mode, SslMode::VerifyFull);
        assert_eq!(options.root_cert.as_deref(), Some("/ca.pem"));

        let (rest, options) = split("postgresql://u@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(options.mode, SslMode::Require);
        assert_eq!(split("postgres://u@h/db").1, TlsOptions::default());
    }

    #[test]
    fn tls_options_are_taken_out_of_key_value_strings() {
        let (rest, options) =
            split("host=h sslmode = verify-ca user=u sslrootcert='/my certs/ca.pem' dbname=d");
        assert_eq!(rest, "host=h  user=u  dbname=d");
        assert_eq!(options.mode, SslMode::VerifyCa);
        assert_eq!(options.root_cert.as_deref(), Some("/my certs/ca.pem"));

        let (rest, options) = split(r"password='it\'s' sslmode=disable");
        assert_eq!(rest, r"password='it\'s' ");
        assert_eq!(options.mode, SslMode::Disable);
        assert_eq!(split("host=h").0, "host=h");
    }

    #[test]
    fn unknown_modes_are_configuration_errors() {
        let err = split_tls_options("host=h sslmode=always").unwrap_err();
        assert!(matches!(err, PersistentError::Config { .. }), "{err}");
        assert!(err.to_string().contains("\"always\""), "{err}");
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let options = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some("/no/such/ca.pem".to_owned()),
        };
        let Err(err) = connector(&options) else {
            panic!("a missing sslrootcert was accepted");
        };
        assert!(matches!(err, PersistentError::Config { .. }), "{err}");
        assert!(err.to_string().contains("/no/such/ca.pem"), "{err}");
    }
}
