//! Sealing: a [`Plan`](super::group::Plan) becomes outgoing copies. Signs once per signer (the
//! signed entity is shared by every group it signs, uncopied) and encrypts once per group (one
//! content key per copy). CPU work: callers run it off the async threads.

use super::capabilities::Choice;
use super::group::{self, Message};
use super::headers;
use crate::policy::{Cipher, Digest, KeyTransport, Policy, SignatureForm};
use crate::reply::{self, Failure, Scope};
use crate::runtime::Stores;
use crate::smime;
use crate::spool::Envelope;
use crate::store::RecipientCert;
use std::sync::Arc;
use std::time::SystemTime;

/// One message to relay.
#[derive(Debug)]
pub struct Copy {
    pub recipients: Vec<String>,
    /// Shared: several groups signed by the same key carry the same signed bytes, uncopied.
    pub message: Arc<Vec<u8>>,
    /// The matching rule (audit log).
    pub rule: Option<String>,
    /// Signer certificate fingerprint, when signed.
    pub signer: Option<String>,
    /// Recipient certificate fingerprints, when encrypted.
    pub encrypted_to: Vec<String>,
    /// Content encryption algorithm name, when encrypted.
    pub algorithm: Option<&'static str>,
}

/// What to do with each pending recipient.
#[derive(Debug, Default)]
pub struct Sealed {
    pub copies: Vec<Copy>,
    /// The message's Message-ID (audit log).
    pub message_id: Option<String>,
    /// Recipients that fail permanently now (a DSN follows).
    pub failed: Vec<(String, Failure)>,
    /// Recipients to hold, with the reason.
    pub held: Vec<(String, String)>,
    /// Recipients to try again later (a temporary crypto failure).
    pub deferred: Vec<(String, Failure)>,
}

pub fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::Aes256Cbc => "aes256-cbc",
        Cipher::Aes128Gcm => "aes128-gcm",
        Cipher::Aes256Gcm => "aes256-gcm",
    }
}

fn content_cipher(c: Cipher) -> smime::ContentCipher {
    match c {
        Cipher::Aes256Cbc => smime::ContentCipher::Aes256Cbc,
        Cipher::Aes128Gcm => smime::ContentCipher::Aes128Gcm,
        Cipher::Aes256Gcm => smime::ContentCipher::Aes256Gcm,
    }
}

fn key_transport(k: KeyTransport) -> smime::KeyTransport {
    match k {
        KeyTransport::RsaPkcs1 => smime::KeyTransport::RsaPkcs1,
        KeyTransport::RsaOaep => smime::KeyTransport::RsaOaep,
    }
}

fn sign_options(p: &Policy) -> smime::SignOptions {
    // SMIMECapabilities (RFC 8551 §2.5.2, §2.7.1): the [policy] default first, then what the
    // rules name; `smime::ReplyAlgorithms` says why and orders them.
    let mut replies = smime::ReplyAlgorithms::preferring(
        content_cipher(p.defaults.encryption),
        key_transport(p.defaults.key_transport),
    );
    for rule in &p.rules {
        let (c, k) = rule.algorithms();
        replies.accept(c.map(content_cipher), k.map(key_transport));
    }
    smime::SignOptions {
        replies,
        form: match p.signature_form {
            SignatureForm::Detached => smime::SignForm::Detached,
            SignatureForm::Opaque => smime::SignForm::Opaque,
        },
        digest: match p.digest {
            Digest::Sha256 => smime::Digest::Sha256,
            Digest::Sha512 => smime::Digest::Sha512,
        },
        rsa_pss: p.rsa_pss,
    }
}

fn encrypt_options(c: &Choice) -> smime::EncryptOptions {
    smime::EncryptOptions {
        cipher: content_cipher(c.cipher),
        key_transport: key_transport(c.key_transport),
    }
}

/// Encrypt-to-self: the sender's own encryption certificate is checked for revocation like any
/// recipient's (a revoked one is left out, and the copy still goes to its recipients).
fn own_cert_usable(
    stores: &Stores,
    signer: &crate::store::SigningIdentity,
    own: &RecipientCert,
    mode: crate::policy::Revocation,
    now: SystemTime,
) -> bool {
    if mode == crate::policy::Revocation::Off {
        return true;
    }
    let mut chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        signer.chain.iter().skip(1).cloned().collect();
    chain.extend(stores.certs.intermediates().iter().cloned());
    let status = stores
        .revocation
        .status(&own.der, &chain, &stores.trust, now);
    super::decide::revocation_verdict(
        stores,
        mode,
        &status,
        "own encryption certificate (encrypt_to_self)",
        &signer.email,
    )
    .is_ok()
}

/// Builds the outgoing copies for `recipients` (the envelope's pending ones). `h` is the
/// message's header as [`headers::read`] gives it, read once by the caller.
pub fn seal(
    policy: &Policy,
    stores: &Stores,
    env: &Envelope,
    message: &[u8],
    h: &headers::Headers,
    recipients: &[String],
) -> Sealed {
    let p = policy;
    let now = SystemTime::now();
    let plan = group::plan(
        p,
        stores,
        Message {
            sender: &env.sender,
            is_bounce: env.is_bounce,
            now,
        },
        h,
        recipients,
    );
    let mut sealed = Sealed {
        message_id: h.message_id.clone(),
        // A policy refusal's text is written for the sender: public as it is.
        failed: plan
            .failed
            .into_iter()
            .map(|(r, reply)| {
                (
                    r,
                    Failure::new(reply, Scope::Recipient, "refused by policy"),
                )
            })
            .collect(),
        held: plan.held,
        // Hard revocation checking, first answer still coming: try again later.
        deferred: plan
            .deferred
            .into_iter()
            .map(|(r, reason)| {
                tracing::info!(queue_id = %env.id, rcpt = %r, reason = %reason, "deferred: waiting for revocation status");
                (
                    r,
                    Failure::new(reply::REVOCATION_PENDING, Scope::Recipient, reason),
                )
            })
            .collect(),
        ..Default::default()
    };
    if plan.groups.is_empty() {
        return sealed;
    }
    let from = h.from.clone().unwrap_or_default();

    // A submitter's tenant header and the triggers never leave the gateway; nothing is
    // rewritten after signing.
    let without_tenant = headers::remove_fields(message, &env.remove_headers);
    let message: &[u8] = without_tenant.as_deref().unwrap_or(message);
    let stripped = headers::strip_triggers(
        message,
        p.subject_tag.as_deref(),
        p.encrypt_header.as_deref(),
    );
    let base: &[u8] = stripped.as_deref().unwrap_or(message);
    // Signed entity per signer fingerprint, made once and shared by every group it signs.
    type Signed = Result<smime::Signed, smime::SmimeError>;
    let mut signed: Vec<(String, Signed)> = Vec::new();
    // Groups still to come per signer: the last one takes the signed entity out of `signed`,
    // so that encrypting it can free it before the encrypted copy is written out.
    let mut signs_left: Vec<(String, usize)> = Vec::new();
    for fp in plan.groups.iter().filter_map(|g| g.key.signer.as_ref()) {
        match signs_left.iter_mut().find(|(f, _)| f == fp) {
            Some((_, n)) => *n += 1,
            None => signs_left.push((fp.clone(), 1)),
        }
    }
    for g in plan.groups {
        let rcpts = g.recipients();
        let first = &g.decisions[0];
        let fail = |sealed: &mut Sealed, e: &smime::SmimeError| {
            tracing::error!(queue_id = %env.id, error = %e, "S/MIME failed");
            // The S/MIME error (key paths, token errors) is private; the bounce says only
            // that sealing failed.
            let (public, into) = if e.is_temporary() {
                (reply::SMIME_TEMPORARY, &mut sealed.deferred)
            } else {
                (reply::SMIME_FAILED, &mut sealed.failed)
            };
            for r in &rcpts {
                into.push((
                    r.clone(),
                    Failure::new(public.clone(), Scope::Message, format!("S/MIME: {e}")),
                ));
            }
        };
        // The signed entity, or `None`: the message goes as `base`.
        let body: Option<smime::Signed> = match (&g.key.signer, &first.signer) {
            (Some(fp), Some(id)) => {
                let i = match signed.iter().position(|(f, _)| f == fp) {
                    Some(i) => i,
                    None => {
                        signed.push((fp.clone(), smime::sign_message(base, id, &sign_options(p))));
                        signed.len() - 1
                    }
                };
                let last = signs_left
                    .iter_mut()
                    .find(|(f, _)| f == fp)
                    .is_none_or(|(_, n)| {
                        *n = n.saturating_sub(1);
                        *n == 0
                    });
                let b = match &signed[i].1 {
                    Ok(b) => b.clone(),
                    Err(e) => {
                        fail(&mut sealed, e);
                        continue;
                    }
                };
                if last {
                    drop(signed.swap_remove(i));
                }
                Some(b)
            }
            _ => None,
        };
        let (message, encrypted_to, algorithm) = match &g.choice {
            None => (
                body.map_or_else(|| Arc::new(base.to_vec()), |b| Arc::clone(b.message())),
                Vec::new(),
                None,
            ),
            Some(choice) => {
                let mut certs: Vec<Arc<RecipientCert>> =
                    g.decisions.iter().filter_map(|d| d.cert.clone()).collect();
                if p.encrypt_to_self
                    && let Some(signer) = stores.signer_at(&from, now)
                    && let Some(own) = signer.encryption_cert.clone()
                    && !certs.iter().any(|c| c.fingerprint == own.fingerprint)
                    && own_cert_usable(stores, &signer, &own, first.treatment.revocation, now)
                {
                    certs.push(own);
                }
                let opts = encrypt_options(choice);
                let encrypted = match body {
                    Some(signed) => smime::encrypt_signed(signed, &certs, &opts),
                    None => smime::encrypt(base, &certs, &opts),
                };
                match encrypted {
                    Ok(m) => (
                        Arc::new(m),
                        certs.iter().map(|c| c.fingerprint.clone()).collect(),
                        Some(cipher_name(choice.cipher)),
                    ),
                    Err(e) => {
                        fail(&mut sealed, &e);
                        continue;
                    }
                }
            }
        };
        sealed.copies.push(Copy {
            recipients: rcpts,
            message,
            rule: first.rule.clone(),
            signer: g.key.signer.clone(),
            encrypted_to,
            algorithm,
        });
    }
    sealed
}
