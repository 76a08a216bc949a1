//! Opening a message that arrives: walk every S/MIME layer, verify signatures, decrypt what
//! is addressed to the organisation's keys. A pure function of bytes, keys, trust and time
//! ([`open`]); the inbound listener, spool and harvesting are wired elsewhere.
//!
//! Layers are recognised on the entity's Content-Type (RFC 8551 §3.2, §3.5):
//! - `multipart/signed` with protocol `application/(x-)pkcs7-signature`: the first part's
//!   bytes exactly as transmitted, between the boundaries (the CRLF before a delimiter belongs
//!   to the delimiter, RFC 2046 §5.1.1), are the signed content; the second part is the
//!   detached SignedData. The walk continues into the first part.
//! - `application/(x-)pkcs7-mime` (and `application/octet-stream` named `*.p7m`): the CMS
//!   content type decides (signed-data, enveloped-data, authEnveloped-data), whatever the
//!   `smime-type` parameter claims. The walk continues into the encapsulated or decrypted
//!   entity.
//!
//! Layers nest in any order up to [`Limits::max_depth`]. The result lists every layer,
//! outermost first ([`Opened::layers`]), and the message to deliver ([`Opened::message`]):
//! the original header fields over the entity left after peeling the *leading* encryption
//! layers (signatures stay, so users' clients can still check them; an encryption layer
//! inside a signature cannot be removed without breaking it). If any of those leading
//! encryption layers fails, the message is returned unchanged: never half-decrypted.
//!
//! Bad input (malformed MIME or CMS, truncated base64, deep nesting, huge SETs, unknown
//! algorithms) becomes a layer with `permerror`; nothing here panics or allocates more than a
//! small multiple of the input.

use std::time::SystemTime;

use base64::Engine;

use super::ber::{self, Node};
use super::decrypt::{self, OrgKey};
use super::verify::{self, Signer};
use super::{algs, mime};

pub use super::opening::{Limits, OpenError, Trust};

/// How a signature travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedForm {
    /// `multipart/signed`.
    Detached,
    /// `application/pkcs7-mime; smime-type=signed-data`.
    Opaque,
}

/// One S/MIME layer, outermost first.
#[derive(Debug, Clone)]
pub enum Layer {
    Signed {
        form: SignedForm,
        /// One entry per SignerInfo; a layer that could not be read at all has one
        /// `permerror` entry saying why.
        signers: Vec<Signer>,
    },
    Encrypted {
        /// AuthEnvelopedData (AES-GCM) rather than EnvelopedData.
        authenticated: bool,
        result: Result<DecryptedLayer, OpenError>,
    },
    /// Something S/MIME-looking we could not classify (bad MIME, unknown CMS type, depth).
    Broken(OpenError),
}

/// What decryption of one layer used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptedLayer {
    pub key_fingerprint: String,
    pub cipher: &'static str,
    pub key_algorithm: &'static str,
}

/// The result of [`open`].
#[derive(Debug, Clone)]
pub struct Opened {
    pub layers: Vec<Layer>,
    /// The message to deliver (see the module header); the input when nothing was peeled.
    pub message: Vec<u8>,
    /// True when [`Opened::message`] is a decryption of the input.
    pub decrypted: bool,
    /// The innermost entity reached (Content-* fields + body), when every layer opened.
    pub innermost: Option<Vec<u8>>,
    /// The From: addresses signers were compared with.
    pub from: Vec<String>,
}

impl Opened {
    /// Every signer of every signature layer (plus one permerror entry per broken signature
    /// or unclassifiable layer), outermost first.
    pub fn signers(&self) -> impl Iterator<Item = &Signer> {
        self.layers.iter().flat_map(|l| match l {
            Layer::Signed { signers, .. } => signers.iter(),
            _ => [].iter(),
        })
    }

    /// True when the message carried at least one S/MIME layer.
    pub fn is_smime(&self) -> bool {
        !self.layers.is_empty()
    }
}

/// Open `message` (a whole RFC 5322 message): see the module header.
pub fn open(
    message: &[u8],
    keys: &[OrgKey],
    trust: &Trust<'_>,
    now: SystemTime,
    limits: &Limits,
) -> Opened {
    // Mail from SMTP is CRLF; a file with LF line ends only (an .eml from disk) is read as
    // its CRLF form. Mixed input is taken as it is: binary bodies must not be rewritten.
    let crlf;
    let wire = if memchr::memmem::find(message, b"\r\n").is_none() && message.contains(&b'\n') {
        crlf = mime::to_crlf(message);
        &crlf[..]
    } else {
        message
    };
    let from = from_addresses(wire);
    let (outer, mut entity) = split_outer(wire);
    let mut layers = Vec::new();
    // Peeling stops at the first layer that is not a decrypted encryption layer.
    let mut peeled: Option<Vec<u8>> = None;
    let mut peeling = true;
    let mut all_opened = true;
    loop {
        if layers.len() >= limits.max_depth {
            if kind(&entity).is_some() {
                layers.push(Layer::Broken(OpenError::Limit(format!(
                    "S/MIME layers nested deeper than {}",
                    limits.max_depth
                ))));
                all_opened = false;
                peeled = None;
            }
            break;
        }
        let Some(k) = kind(&entity) else { break };
        match step(&entity, k, keys, trust, &from, now, limits) {
            Step::Signed(layer, inner) => {
                layers.push(layer);
                peeling = false;
                match inner {
                    Some(i) => entity = i,
                    None => {
                        all_opened = false;
                        break;
                    }
                }
            }
            Step::Encrypted(layer, inner) => {
                layers.push(layer);
                match inner {
                    Some(i) => {
                        if peeling {
                            peeled = Some(i.clone());
                        }
                        entity = i;
                    }
                    None => {
                        if peeling {
                            peeled = None;
                        }
                        all_opened = false;
                        break;
                    }
                }
            }
            Step::Broken(e) => {
                layers.push(Layer::Broken(e));
                if peeling {
                    peeled = None;
                }
                all_opened = false;
                break;
            }
        }
    }
    let (out, decrypted) = match peeled {
        Some(inner) => {
            let mut m = outer;
            let (head, _) = head_body(&inner);
            let entity_has_fields =
                mime::looks_like_field(inner.split(|&b| b == b'\n').next().unwrap_or_default());
            // One MIME-Version: the inner entity's when it has one (openssl writes it).
            if !(entity_has_fields && field_value(head, "MIME-Version").is_some()) {
                m.extend_from_slice(b"MIME-Version: 1.0\r\n");
            }
            if !entity_has_fields && !inner.starts_with(b"\r\n") && !inner.starts_with(b"\n") {
                // Bare content without header fields (RFC 5652 allows it; text/plain by
                // default): it must not continue our header block.
                m.extend_from_slice(b"\r\n");
            }
            m.extend_from_slice(&inner);
            (m, true)
        }
        None => (message.to_vec(), false),
    };
    Opened {
        innermost: (all_opened && !layers.is_empty()).then_some(entity),
        layers,
        message: out,
        decrypted,
        from,
    }
}

enum Step {
    Signed(Layer, Option<Vec<u8>>),
    Encrypted(Layer, Option<Vec<u8>>),
    Broken(OpenError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MultipartSigned,
    Pkcs7Mime,
}

/// The From: addresses, normalised like the stores' lookups.
fn from_addresses(message: &[u8]) -> Vec<String> {
    let end = crate::message::header_len(message);
    let Some(m) = mail_parser::MessageParser::default().parse_headers(&message[..end]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in m.headers() {
        if matches!(h.name, mail_parser::HeaderName::From)
            && let mail_parser::HeaderValue::Address(a) = &h.value
        {
            for addr in a.iter() {
                if let Some(x) = &addr.address {
                    out.push(crate::store::normalize_address(x));
                }
            }
        }
    }
    out
}

/// Content-Type of an entity (Content-* fields + CRLF + body): lower-cased type and
/// parameters (names lower-cased, values unquoted).
fn content_type(entity: &[u8]) -> (String, Vec<(String, String)>) {
    let (head, _) = head_body(entity);
    let value = field_value(head, "content-type").unwrap_or_default();
    parse_content_type(&value)
}

fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut chars = value.char_indices().peekable();
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    while let Some((_, c)) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some((_, n)) = chars.next() {
                    cur.push(n);
                }
            }
            ';' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let mime = parts
        .first()
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let params = parts
        .iter()
        .skip(1)
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    (mime, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Split an entity at its blank line. CRLF is the rule; a decrypted or encapsulated entity
/// with LF line ends only is split at its first empty line too. The body is never rewritten.
fn head_body(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&[], &entity[2..]);
    }
    if entity.starts_with(b"\n") {
        return (&[], &entity[1..]);
    }
    let crlf = memchr::memmem::find(entity, b"\r\n\r\n");
    let lf = memchr::memmem::find(entity, b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l < c + 1 => (&entity[..l + 1], &entity[l + 2..]),
        (Some(c), _) => (&entity[..c + 2], &entity[c + 4..]),
        (None, Some(l)) => (&entity[..l + 1], &entity[l + 2..]),
        (None, None) => (entity, &[]),
    }
}

/// The header fields of a block, each with its continuation lines and line end.
fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= head.len() {
            return None;
        }
        let mut j = i;
        loop {
            j = memchr::memchr(b'\n', &head[j..]).map_or(head.len(), |k| j + k + 1);
            if j >= head.len() || !matches!(head[j], b' ' | b'\t') {
                break;
            }
        }
        let f = &head[i..j];
        i = j;
        Some(f)
    })
}

/// (outer header fields, entity): the entity is the `Content-*` fields, an empty line and the
/// body as it is; every other field except MIME-Version stays outside.
fn split_outer(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (head, body) = head_body(message);
    let mut outer = Vec::with_capacity(head.len());
    let mut entity = Vec::with_capacity(message.len());
    for f in fields(head) {
        let name = memchr::memchr(b':', f).map_or(&b""[..], |c| &f[..c]);
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        if name.starts_with("content-") {
            entity.extend_from_slice(f);
        } else if name != "mime-version" {
            outer.extend_from_slice(f);
        }
    }
    if entity.is_empty() {
        // RFC 2045 §5.2 default.
        entity.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\n");
    }
    entity.extend_from_slice(b"\r\n");
    entity.extend_from_slice(body);
    (outer, entity)
}

/// Unfolded value of the first field `name` (lower-case) in a header block.
fn field_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// Whether the message's top-level entity is an S/MIME layer (signed or encrypted): what
/// [`open`] would start peeling. Reads only the header.
pub fn carries_smime(message: &[u8]) -> bool {
    kind(message).is_some()
}

fn kind(entity: &[u8]) -> Option<Kind> {
    let (mime, params) = content_type(entity);
    match mime.as_str() {
        "multipart/signed" => {
            let protocol = param(&params, "protocol")
                .unwrap_or("")
                .to_ascii_lowercase();
            matches!(
                protocol.as_str(),
                "application/pkcs7-signature" | "application/x-pkcs7-signature"
            )
            .then_some(Kind::MultipartSigned)
        }
        "application/pkcs7-mime" | "application/x-pkcs7-mime" => {
            // certs-only carries no message (RFC 8551 §3.8).
            let t = param(&params, "smime-type")
                .unwrap_or("")
                .to_ascii_lowercase();
            (t != "certs-only").then_some(Kind::Pkcs7Mime)
        }
        "application/octet-stream" => {
            let (head, _) = head_body(entity);
            let disposition = field_value(head, "content-disposition").unwrap_or_default();
            let (_, dparams) = parse_content_type(&disposition);
            let name = param(&params, "name")
                .or(param(&dparams, "filename"))
                .unwrap_or("")
                .to_ascii_lowercase();
            name.ends_with(".p7m").then_some(Kind::Pkcs7Mime)
        }
        _ => None,
    }
}

/// Body bytes after Content-Transfer-Encoding (base64 or identity; RFC 8551 §3.1.2).
fn decoded_body(entity: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (head, body) = head_body(entity);
    let cte = field_value(head, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_str() {
        "base64" => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                    .with_decode_allow_trailing_bits(true),
            );
            engine
                .decode(&clean)
                .map_err(|e| OpenError::Malformed(format!("base64 body: {e}")))
        }
        "" | "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
        other => Err(OpenError::Unsupported(format!(
            "Content-Transfer-Encoding {other} on CMS"
        ))),
    }
}

/// Parse a CMS ContentInfo from BER: (content type, the content's node).
fn content_info<'a>(
    der: &'a [u8],
    limits: &Limits,
) -> Result<(const_oid::ObjectIdentifier, Node<'a>), OpenError> {
    let root = ber::parse(der, limits.max_asn1_nodes).map_err(|e| match e {
        ber::BerError::TooDeep | ber::BerError::TooManyNodes => {
            OpenError::Limit(format!("CMS: {e}"))
        }
        _ => OpenError::Malformed(format!("CMS: {e}")),
    })?;
    let bad = || OpenError::Malformed("CMS: not a ContentInfo".into());
    if root.tag != [0x30] {
        return Err(bad());
    }
    let mut kids = match root.value {
        ber::Value::Constructed(k) => k,
        ber::Value::Primitive(_) => return Err(bad()),
    };
    if kids.len() != 2 || kids[0].tag != [0x06] || kids[1].tag != [0xa0] {
        return Err(bad());
    }
    let explicit = kids.pop().ok_or_else(bad)?;
    let oid = kids[0]
        .primitive()
        .and_then(|b| const_oid::ObjectIdentifier::from_bytes(b).ok())
        .ok_or_else(bad)?;
    let mut inner = match explicit.value {
        ber::Value::Constructed(k) if k.len() == 1 => k,
        _ => return Err(bad()),
    };
    Ok((oid, inner.pop().ok_or_else(bad)?))
}

#[allow(clippy::too_many_arguments)]
fn step(
    entity: &[u8],
    kind: Kind,
    keys: &[OrgKey],
    trust: &Trust<'_>,
    from: &[String],
    now: SystemTime,
    limits: &Limits,
) -> Step {
    match kind {
        Kind::MultipartSigned => {
            let (content, sig_entity) = match split_signed(entity) {
                Ok(x) => x,
                Err(e) => {
                    let layer = Layer::Signed {
                        form: SignedForm::Detached,
                        signers: vec![Signer::broken(&e)],
                    };
                    return Step::Signed(layer, None);
                }
            };
            let signers = match decoded_body(sig_entity)
                .and_then(|der| signed(&der, Some(content), from, trust, now, limits))
            {
                Ok((signers, _)) => signers,
                Err(e) => vec![Signer::broken(&e)],
            };
            Step::Signed(
                Layer::Signed {
                    form: SignedForm::Detached,
                    signers,
                },
                Some(content.to_vec()),
            )
        }
        Kind::Pkcs7Mime => {
            let der = match decoded_body(entity) {
                Ok(d) => d,
                Err(e) => return Step::Broken(e),
            };
            let (oid, node) = match content_info(&der, limits) {
                Ok(x) => x,
                Err(e) => return Step::Broken(e),
            };
            if oid == algs::ID_SIGNED_DATA {
                let (signers, inner) = match verify_node(node, None, from, trust, now, limits) {
                    Ok((s, inner)) => (s, inner),
                    Err(e) => (vec![Signer::broken(&e)], None),
                };
                Step::Signed(
                    Layer::Signed {
                        form: SignedForm::Opaque,
                        signers,
                    },
                    inner,
                )
            } else if oid == algs::ID_ENVELOPED_DATA || oid == algs::ID_AUTH_ENVELOPED_DATA {
                let auth = oid == algs::ID_AUTH_ENVELOPED_DATA;
                let result = envelope(node, auth, keys, limits);
                let inner = result.as_ref().ok().map(|(_, c)| c.clone());
                Step::Encrypted(
                    Layer::Encrypted {
                        authenticated: auth,
                        result: result.map(|(l, _)| l),
                    },
                    inner,
                )
            } else {
                Step::Broken(OpenError::Unsupported(format!("CMS content type {oid}")))
            }
        }
    }
}

/// A detached signature: parse and verify.
fn signed(
    der: &[u8],
    detached: Option<&[u8]>,
    from: &[String],
    trust: &Trust<'_>,
    now: SystemTime,
    limits: &Limits,
) -> Result<(Vec<Signer>, Option<Vec<u8>>), OpenError> {
    let (oid, node) = content_info(der, limits)?;
    if oid != algs::ID_SIGNED_DATA {
        return Err(OpenError::Malformed(format!(
            "signature part holds CMS type {oid}, not SignedData"
        )));
    }
    verify_node(node, detached, from, trust, now, limits)
}

fn verify_node(
    node: Node<'_>,
    detached: Option<&[u8]>,
    from: &[String],
    trust: &Trust<'_>,
    now: SystemTime,
    limits: &Limits,
) -> Result<(Vec<Signer>, Option<Vec<u8>>), OpenError> {
    let v = verify::verify(node, detached, from, trust, now, limits)?;
    // Only id-data content is a MIME entity we can walk into.
    let inner = v.econtent.filter(|_| v.econtent_is_data);
    Ok((v.signers, inner))
}

fn envelope(
    mut node: Node<'_>,
    auth: bool,
    keys: &[OrgKey],
    limits: &Limits,
) -> Result<(DecryptedLayer, Vec<u8>), OpenError> {
    let n = decrypt::recipient_count(&node);
    if n > limits.max_recipient_infos {
        return Err(OpenError::Limit(format!(
            "{n} RecipientInfos (limit {})",
            limits.max_recipient_infos
        )));
    }
    decrypt::fix_encrypted_content(&mut node)?;
    let d = decrypt::decrypt(&node.to_der(), auth, keys, limits)?;
    Ok((
        DecryptedLayer {
            key_fingerprint: d.key_fingerprint,
            cipher: d.cipher,
            key_algorithm: d.key_algorithm,
        },
        d.content,
    ))
}

/// `multipart/signed` (RFC 1847, RFC 8551 §3.5.3): (first part exactly as transmitted,
/// second part entity).
fn split_signed(entity: &[u8]) -> Result<(&[u8], &[u8]), OpenError> {
    let (_, params) = content_type(entity);
    let boundary = param(&params, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| OpenError::Malformed("multipart/signed without a boundary".into()))?;
    let (_, body) = head_body(entity);
    let delim = format!("--{boundary}");
    // Delimiter lines: at the start of the body or after CRLF, followed by optional
    // whitespace and CRLF (or "--" for the close delimiter).
    let mut lines = Vec::new(); // (start of the CRLF before it or 0, start of the line after it, close)
    let mut pos = 0;
    while let Some(p) = memchr::memmem::find(&body[pos..], delim.as_bytes()) {
        let at = pos + p;
        pos = at + delim.len();
        if at != 0 && !body[..at].ends_with(b"\r\n") {
            continue;
        }
        let rest = &body[at + delim.len()..];
        let close = rest.starts_with(b"--");
        let after = if close { &rest[2..] } else { rest };
        let ws = after
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let after = &after[ws..];
        if !(after.starts_with(b"\r\n") || (close && after.is_empty())) {
            continue; // the boundary string inside a longer line
        }
        let next_line = body.len() - after.len() + after.len().min(2);
        let before = if at == 0 { 0 } else { at - 2 };
        lines.push((before, next_line, close));
        if close || lines.len() > 3 {
            break;
        }
    }
    match lines.as_slice() {
        [
            (_, first_start, false),
            (first_end, second_start, false),
            (second_end, _, true),
            ..,
        ] => {
            // Adjacent delimiter lines ("--b CRLF --b") share the CRLF: no part between them.
            match (
                body.get(*first_start..*first_end),
                body.get(*second_start..*second_end),
            ) {
                (Some(first), Some(second)) => Ok((first, second)),
                _ => Err(OpenError::Malformed(
                    "multipart/signed with an empty part".into(),
                )),
            }
        }
        _ => Err(OpenError::Malformed(
            "multipart/signed is not exactly two parts".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smime::opening::AuthResult;
    use crate::store::TrustAnchors;

    #[test]
    fn split_signed_takes_the_first_part_exactly() {
        let e = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--bb not a delimiter\r\n\r\n--b  \r\nContent-Type: application/pkcs7-signature\r\n\r\nSIG\r\n--b--\r\n";
        let (first, second) = split_signed(e).unwrap();
        assert_eq!(
            first,
            b"Content-Type: text/plain\r\n\r\nhi\r\n--bb not a delimiter\r\n"
        );
        assert_eq!(
            second,
            b"Content-Type: application/pkcs7-signature\r\n\r\nSIG"
        );
        let one_part = b"Content-Type: multipart/signed; boundary=b\r\n\r\n--b\r\nx\r\n--b--\r\n";
        assert!(matches!(
            split_signed(one_part),
            Err(OpenError::Malformed(_))
        ));
        // Delimiters on adjacent lines: no part between them, and no slice out of order.
        for body in [
            &b"--b\r\n--b\r\nsig\r\n--b--\r\n"[..],
            b"--b\r\nx\r\n--b\r\n--b--\r\n",
            b"--b\r\n--b\r\n--b--",
        ] {
            let mut e = b"Content-Type: multipart/signed; boundary=b\r\n\r\n".to_vec();
            e.extend_from_slice(body);
            assert!(
                matches!(split_signed(&e), Err(OpenError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn content_type_parameters_unquote() {
        let (t, p) = parse_content_type(
            "Application/PKCS7-MIME; name=\"smime.p7m\"; smime-type=\"enveloped-data\"",
        );
        assert_eq!(t, "application/pkcs7-mime");
        assert_eq!(param(&p, "smime-type"), Some("enveloped-data"));
        assert_eq!(param(&p, "name"), Some("smime.p7m"));
        let (_, p) = parse_content_type("multipart/signed; boundary=\"a;b\\\"c\"");
        assert_eq!(param(&p, "boundary"), Some("a;b\"c"));
    }

    #[test]
    fn p7m_attachment_names_are_recognised() {
        let e = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"SMIME.P7M\"\r\n\r\n";
        assert_eq!(kind(e), Some(Kind::Pkcs7Mime));
        let e = b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n\r\n";
        assert_eq!(kind(e), None);
        assert_eq!(kind(b"Content-Type: text/plain\r\n\r\nx"), None);
    }

    #[test]
    fn plain_message_has_no_layers_and_is_untouched() {
        let anchors = TrustAnchors::default();
        let trust = Trust {
            anchors: &anchors,
            known: &[],
        };
        let m = b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n";
        let o = open(m, &[], &trust, SystemTime::now(), &Limits::default());
        assert!(o.layers.is_empty());
        assert_eq!(o.message, m);
        assert!(!o.decrypted);
        assert_eq!(o.from, ["a@example.org"]);
    }

    fn broken(message: &[u8]) -> OpenError {
        let anchors = TrustAnchors::default();
        let trust = Trust {
            anchors: &anchors,
            known: &[],
        };
        let o = open(message, &[], &trust, SystemTime::now(), &Limits::default());
        assert_eq!(o.message, message, "bad input is delivered untouched");
        match o.layers.as_slice() {
            [Layer::Broken(e)] => e.clone(),
            [Layer::Signed { signers, .. }] => {
                assert_eq!(signers.len(), 1);
                assert_eq!(signers[0].result, AuthResult::PermError);
                OpenError::Malformed(signers[0].reason.clone())
            }
            [Layer::Encrypted { result: Err(e), .. }] => e.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_base64_and_malformed_cms_are_permerrors() {
        let e = broken(b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\nA\r\n");
        assert!(
            matches!(e, OpenError::Malformed(ref r) if r.contains("base64")),
            "{e}"
        );
        // Valid base64 of a truncated ContentInfo.
        let e = broken(b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n");
        assert!(
            matches!(e, OpenError::Malformed(ref r) if r.contains("truncated")),
            "{e}"
        );
        let e = broken(b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n");
        assert!(matches!(e, OpenError::Malformed(_)), "{e}");
        let e = broken(b"Content-Type: application/x-pkcs7-mime\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nx\r\n");
        assert!(matches!(e, OpenError::Unsupported(_)), "{e}");
    }
}
