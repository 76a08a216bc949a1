//! Inbound TLS: the acceptor built from `server.tls_cert` / `tls_key` (the runtime builds it at
//! load and reload), and TLS client certificates: how a shared cloud platform (Microsoft 365, Google)
//! proves which platform it is, so a `[[submitter]]` entry can trust it rather than its
//! shared IP ranges.
//!
//! The handshake asks for a certificate (optional: ordinary MTAs send none) only when some
//! `[[submitter]]` matches on `tls_client`. The verifier accepts any certificate whose
//! handshake signature is valid (proof of the private key); what the certificate is worth is
//! decided after the handshake by [`describe`]: its SHA-256 fingerprint (for pinning), and
//! whether its chain validates for TLS client authentication against `server.tls_client_ca`
//! (for issuer + subject matching). A certificate that matches no entry grants nothing.

use crate::policy::submitter::ClientCert;
use rustls::DistinguishedName;
use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the inbound TLS acceptor from PEM files; errors name the file. `ask_client_cert`:
/// request (never require) a client certificate, for `[[submitter]]` entries with `tls_client`.
pub fn tls_acceptor(cert: &Path, key: &Path, ask_client_cert: bool) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if ask_client_cert {
        builder.with_client_cert_verifier(AnyClientCert::new())
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts any client certificate with a valid handshake signature; see the module header.
#[derive(Debug)]
pub struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub fn new() -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert {
            algs: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What the session knows about the presented chain (`chain[0]` is the end entity).
pub fn describe(
    chain: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'static>],
) -> Option<ClientCert> {
    use der::Decode;
    let ee = chain.first()?;
    let fingerprint =
        crate::store::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ee).as_ref())
            .to_lowercase();
    let parsed = x509_cert::Certificate::from_der(ee).ok();
    let (issuer, subject) = parsed
        .map(|c| {
            (
                c.tbs_certificate().issuer().to_string(),
                c.tbs_certificate().subject().to_string(),
            )
        })
        .unwrap_or_default();
    let chain_verified = !anchors.is_empty()
        && webpki::EndEntityCert::try_from(ee).is_ok_and(|cert| {
            cert.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                &chain[1..],
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .is_ok()
        });
    Some(ClientCert {
        fingerprint,
        issuer,
        subject,
        chain_verified,
    })
}
