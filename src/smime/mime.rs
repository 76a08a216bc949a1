//! MIME canonicalisation before signing or encrypting (RFC 8551 §3.1, RFC 2045/2046).
//!
//! A message is split into its *outer* header fields (From, To, Subject, Date, Message-ID,
//! Received, ... which stay visible and unsigned) and its *entity*: the `Content-*` fields plus
//! the body, which is what gets signed or encrypted (RFC 8551 §3.1: "the MIME entity").
//!
//! The entity is then made safe for any 7-bit relay, so no one downstream can break a signature:
//! - every line ends in CRLF (lone LF or CR become CRLF; RFC 8551 §3.1.1);
//! - each leaf part whose body is 8-bit, binary, contains NUL, or has a line over 998 octets
//!   (RFC 5322 §2.1.1) is re-encoded: `text/*` as quoted-printable, everything else as base64
//!   (RFC 8551 §3.1.2); quoted-printable also escapes a line-leading `From ` and `.` and trailing
//!   white space, which mbox writers and careless relays are known to alter;
//! - multiparts are walked recursively and keep their boundaries; an 8-bit preamble or epilogue
//!   (never shown by clients) is dropped.
//!
//! Canonicalising an entity that is already canonical changes nothing, so an already signed
//! entity can be encrypted without breaking its signature.
//!
//! Speed (issue 12): mail from SMTP is CRLF already and most bodies are 7-bit, so the common
//! case copies nothing here: [`crlf_form`] borrows a message that needs no fixing, and an
//! [`Entity`] keeps its body as a slice of the input unless a part had to be re-encoded. The
//! checks ([`is_crlf_clean`], [`is_7bit_safe`]) are single branch-free passes the compiler
//! vectorises; [`base64_lines_into`] writes 76-column lines straight into the caller's buffer.
//! The straightforward versions they replaced stay in `tests::reference`, and a property test
//! holds both to the same output.

use std::borrow::Cow;

use base64::Engine;

/// RFC 5322 §2.1.1 hard limit, excluding CRLF.
const MAX_LINE: usize = 998;

/// One header field, raw (with its folding and final CRLF) plus its lower-cased name.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub name: String,
    pub raw: Vec<u8>,
}

impl Field {
    /// Unfolded value with surrounding whitespace trimmed.
    pub fn value(&self) -> String {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(self.raw.len());
        let v = &self.raw[(colon + 1).min(self.raw.len())..];
        let v: Vec<u8> = v
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&v).trim().to_string()
    }

    fn new(name: &str, value: &str) -> Field {
        Field {
            name: name.to_ascii_lowercase(),
            raw: format!("{name}: {value}\r\n").into_bytes(),
        }
    }
}

/// A message split for S/MIME: outer header fields and the canonical entity.
#[derive(Debug)]
pub(crate) struct Split<'a> {
    /// Non-`Content-*` header fields, raw, in original order (MIME-Version removed; the caller
    /// writes its own).
    pub outer: Vec<u8>,
    /// `Content-*` fields + CRLF + canonical body.
    pub entity: Entity<'a>,
}

/// A MIME entity in two pieces, so a body that needs no change is never copied: its bytes are
/// `head` followed by `body`.
#[derive(Debug)]
pub(crate) struct Entity<'a> {
    /// The `Content-*` fields and the empty line ending them.
    pub head: Vec<u8>,
    /// The body: borrowed from the message unless canonicalisation changed it.
    pub body: Cow<'a, [u8]>,
}

impl Entity<'_> {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Both pieces, in order (what a digest or a cipher consumes).
    pub fn pieces(&self) -> [&[u8]; 2] {
        [&self.head, &self.body]
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        self.write_to(&mut v);
        v
    }

    /// True when `needle` occurs in the entity. `needle` must hold no CR or LF: `head` ends
    /// in CRLF CRLF, so no occurrence can straddle the two pieces.
    pub fn contains(&self, needle: &[u8]) -> bool {
        debug_assert!(!needle.contains(&b'\r') && !needle.contains(&b'\n'));
        memchr::memmem::find(&self.head, needle).is_some()
            || memchr::memmem::find(&self.body, needle).is_some()
    }
}

/// Normalise line ends to CRLF (RFC 5322 §2.1: CR and LF only occur together as CRLF).
pub(crate) fn to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut rest = input;
    // Copy runs between CR/LF in bulk; only the line ends themselves are looked at.
    while let Some(p) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..p]);
        out.extend_from_slice(b"\r\n");
        let skip = if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[p + skip..];
    }
    out.extend_from_slice(rest);
    out
}

/// Octets per block of the vectorised checks ([`is_crlf_clean`], [`is_7bit_safe`]).
const SCAN_BLOCK: usize = 512;

/// True when every CR is followed by LF and every LF follows a CR (the message needs no
/// [`to_crlf`]). One pass without early exit inside a block, so it vectorises; a block is
/// large enough that the per-block reduction costs little and small enough to stop early.
pub(crate) fn is_crlf_clean(input: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (input.first(), input.last()) else {
        return true;
    };
    if first == b'\n' || last == b'\r' {
        return false;
    }
    // For each adjacent pair (a, b): a is CR exactly when b is LF.
    let mut i = 0;
    while i + 1 < input.len() {
        let end = (i + SCAN_BLOCK).min(input.len() - 1);
        let (a, b) = (&input[i..end], &input[i + 1..end + 1]);
        let bad = a.iter().zip(b).fold(0u8, |acc, (&x, &y)| {
            acc | ((x == b'\r') ^ (y == b'\n')) as u8
        });
        if bad != 0 {
            return false;
        }
        i = end;
    }
    true
}

/// `input` with CRLF line ends: borrowed when it has them already (mail from SMTP).
pub(crate) fn crlf_form(input: &[u8]) -> Cow<'_, [u8]> {
    if is_crlf_clean(input) {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(to_crlf(input))
    }
}

/// Split header block and body at the first empty line; input must be CRLF already.
fn split_head_body(msg: &[u8]) -> (&[u8], &[u8]) {
    match crate::message::split(msg) {
        Some((head, body)) => (&msg[..head], &msg[body..]),
        // Only headers, or a body without any header: decide by whether the first line is a field.
        None if looks_like_field(msg) => (msg, &[]),
        None => (&[], msg),
    }
}

pub(crate) fn looks_like_field(line: &[u8]) -> bool {
    let end = line.iter().position(|&b| b == b'\r').unwrap_or(line.len());
    let line = &line[..end];
    match line.iter().position(|&b| b == b':') {
        Some(c) if c > 0 => line[..c].iter().all(|&b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}

/// Header block into fields; continuation lines (leading WSP) belong to the previous field.
/// Every field's `raw` ends in CRLF, even when the header's last line had none (a message
/// that is only a header), so that whatever is written after a field starts a line of its own.
fn parse_fields(head: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut rest = head;
    while !rest.is_empty() {
        let end = memchr::memmem::find(rest, b"\r\n")
            .map(|p| p + 2)
            .unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        if matches!(line.first(), Some(b' ' | b'\t'))
            && let Some(last) = fields.last_mut()
        {
            last.raw.extend_from_slice(line);
            if !last.raw.ends_with(b"\r\n") {
                last.raw.extend_from_slice(b"\r\n");
            }
            continue;
        }
        let name_end = line.iter().position(|&b| b == b':').unwrap_or(0);
        let name = String::from_utf8_lossy(&line[..name_end])
            .trim()
            .to_ascii_lowercase();
        let mut raw = line.to_vec();
        if !raw.ends_with(b"\r\n") {
            raw.extend_from_slice(b"\r\n");
        }
        fields.push(Field { name, raw });
    }
    fields
}

/// Split a whole message into outer fields and the canonical entity.
/// With `canonicalise == false` only line ends are fixed (used for already-signed entities).
pub(crate) fn split_message(message: &[u8], canonicalise: bool) -> Split<'_> {
    match crlf_form(message) {
        Cow::Borrowed(msg) => split_crlf(msg, canonicalise),
        // Rare (files with LF line ends): the fixed copy is local, so the entity owns its body.
        Cow::Owned(msg) => {
            let split = split_crlf(&msg, canonicalise);
            Split {
                outer: split.outer,
                entity: Entity {
                    head: split.entity.head,
                    body: Cow::Owned(split.entity.body.into_owned()),
                },
            }
        }
    }
}

fn split_crlf(msg: &[u8], canonicalise: bool) -> Split<'_> {
    let (head, body) = split_head_body(msg);
    let mut outer = Vec::new();
    let mut inner = Vec::new();
    for f in parse_fields(head) {
        if f.name.starts_with("content-") {
            inner.push(f);
        } else if f.name != "mime-version" {
            outer.extend_from_slice(&f.raw);
        }
    }
    if !inner.iter().any(|f| f.name == "content-type") {
        // RFC 2045 §5.2 default, with a charset we can stand behind when the body is 8-bit.
        let ct = if body.is_ascii() {
            "text/plain; charset=us-ascii"
        } else if std::str::from_utf8(body).is_ok() {
            "text/plain; charset=utf-8"
        } else {
            "text/plain; charset=unknown-8bit"
        };
        inner.insert(0, Field::new("Content-Type", ct));
    }
    let entity = if canonicalise {
        entity_parts(inner, body, 0)
    } else {
        Entity {
            head: head_bytes(&inner),
            body: Cow::Borrowed(body),
        }
    };
    Split { outer, entity }
}

/// The fields and the empty line after them.
fn head_bytes(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2);
    for f in fields {
        out.extend_from_slice(&f.raw);
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn entity<'a>(fields: &[Field], body: impl Into<Cow<'a, [u8]>>) -> Entity<'a> {
    Entity {
        head: head_bytes(fields),
        body: body.into(),
    }
}

/// Content-Type essentials: lower-cased `type/subtype` and the boundary parameter.
fn content_type(fields: &[Field]) -> (String, Option<String>) {
    let Some(f) = fields.iter().find(|f| f.name == "content-type") else {
        return ("text/plain".into(), None);
    };
    let v = f.value();
    let mut parts = v.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut boundary = None;
    for p in parts {
        if let Some((k, val)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("boundary")
        {
            boundary = Some(val.trim().trim_matches('"').to_string());
        }
    }
    (mime, boundary)
}

fn transfer_encoding(fields: &[Field]) -> String {
    fields
        .iter()
        .find(|f| f.name == "content-transfer-encoding")
        .map(|f| f.value().to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".into())
}

/// True when the body can cross any 7-bit relay untouched.
fn is_7bit_safe(body: &[u8]) -> bool {
    // NUL and 8-bit octets: `b - 1` wraps NUL to 0xff, so one comparison catches both. Blocks
    // without early exit inside, so the compiler vectorises the block.
    for block in body.chunks(SCAN_BLOCK) {
        if block
            .iter()
            .fold(0u8, |acc, &b| acc | (b.wrapping_sub(1) >= 0x7f) as u8)
            != 0
        {
            return false;
        }
    }
    if body.len() <= MAX_LINE + 1 {
        return true;
    }
    // No line longer than 998 octets plus its CR (RFC 5322 §2.1.1), LF as the separator.
    // From the start of a line, the window of the next 1,000 octets must hold an LF (the line
    // ends within it); every line up to the window's *last* LF is then short enough, so the
    // walk jumps a window at a time rather than a line at a time.
    let mut start = 0;
    while body.len() - start > MAX_LINE + 1 {
        match memchr::memrchr(b'\n', &body[start..start + MAX_LINE + 2]) {
            Some(nl) => start += nl + 1,
            None => return false,
        }
    }
    true
}

/// Depth limit for nested multiparts: deeper structures are treated as opaque leaves.
const MAX_DEPTH: usize = 32;

/// Canonical bytes of one entity (fields + CRLF + body).
fn entity_bytes(fields: Vec<Field>, body: &[u8], depth: usize) -> Vec<u8> {
    entity_parts(fields, body, depth).to_vec()
}

/// One canonical entity; the body stays borrowed when it needs no change.
fn entity_parts(mut fields: Vec<Field>, body: &[u8], depth: usize) -> Entity<'_> {
    let (mime, boundary) = content_type(&fields);
    let cte = transfer_encoding(&fields);
    if mime.starts_with("multipart/")
        && depth < MAX_DEPTH
        && let Some(b) = boundary.filter(|b| !b.is_empty())
    {
        let new_body = multipart_body(body, &b, depth);
        if cte != "7bit" {
            // RFC 2045 §6.4: a multipart's encoding is the widest of its parts, now 7bit.
            set_cte(&mut fields, None);
        }
        return entity(&fields, new_body);
    }
    if mime == "message/rfc822" && depth < MAX_DEPTH && !is_7bit_safe(body) && cte != "base64" {
        // Canonicalise the enclosed message; only if its header is still 8-bit do we fall back
        // to base64 (RFC 2046 §5.2.1 frowns on it, but every client reads it).
        let (h, b) = split_head_body(body);
        let inner = parse_fields(h);
        let new_body = entity_bytes(inner, b, depth + 1);
        if is_7bit_safe(&new_body) {
            set_cte(&mut fields, None);
            return entity(&fields, new_body);
        }
        set_cte(&mut fields, Some("base64"));
        return entity(&fields, base64_lines(&new_body));
    }
    let already_encoded = matches!(cte.as_str(), "base64" | "quoted-printable");
    if is_7bit_safe(body) && (already_encoded || !matches!(cte.as_str(), "binary")) {
        if cte == "8bit" {
            set_cte(&mut fields, Some("7bit"));
        }
        return entity(&fields, body);
    }
    // Re-encode (RFC 8551 §3.1.2). A part labelled base64/QP that is not 7-bit is mislabelled;
    // its raw octets are what we protect.
    if mime.starts_with("text/") && !matches!(cte.as_str(), "binary") && !body.contains(&0) {
        set_cte(&mut fields, Some("quoted-printable"));
        entity(&fields, quoted_printable(body))
    } else {
        set_cte(&mut fields, Some("base64"));
        entity(&fields, base64_lines(body))
    }
}

/// Replace (or remove, with `None`) the Content-Transfer-Encoding field.
fn set_cte(fields: &mut Vec<Field>, cte: Option<&str>) {
    fields.retain(|f| f.name != "content-transfer-encoding");
    if let Some(cte) = cte {
        fields.push(Field::new("Content-Transfer-Encoding", cte));
    }
}

/// Walk a multipart body (RFC 2046 §5.1.1): delimiter lines are `--boundary` (trailing white
/// space allowed), the CRLF before a delimiter belongs to it, `--boundary--` closes.
fn multipart_body(body: &[u8], boundary: &str, depth: usize) -> Vec<u8> {
    let open = format!("--{boundary}");
    // Line start offsets of delimiter lines, with whether they close.
    let mut delims: Vec<(usize, usize, bool)> = Vec::new(); // (line start, line end incl CRLF, close)
    let mut pos = 0;
    while pos < body.len() {
        let end = memchr::memmem::find(&body[pos..], b"\r\n")
            .map(|p| pos + p + 2)
            .unwrap_or(body.len());
        let line = &body[pos..end];
        let trimmed = trim_end_ws(line);
        if trimmed.starts_with(open.as_bytes()) {
            let rest = &trimmed[open.len()..];
            if rest.is_empty() {
                delims.push((pos, end, false));
            } else if rest == b"--" {
                delims.push((pos, end, true));
                break;
            }
        }
        pos = end;
    }
    if delims.is_empty() {
        // Not really a multipart: protect it as a leaf would be.
        return if is_7bit_safe(body) {
            body.to_vec()
        } else {
            base64_lines(body)
        };
    }
    let mut out = Vec::with_capacity(body.len() + 1024);
    let first = delims[0].0;
    let preamble = &body[..first];
    if is_7bit_safe(preamble) {
        out.extend_from_slice(preamble);
    }
    for (i, &(start, end, close)) in delims.iter().enumerate() {
        out.extend_from_slice(&body[start..end]);
        if close {
            let epilogue = &body[end..];
            if is_7bit_safe(epilogue) {
                out.extend_from_slice(epilogue);
            }
            return out;
        }
        // Part runs to the CRLF before the next delimiter (or to the end when unterminated).
        let part_end = match delims.get(i + 1) {
            Some(&(next, _, _)) => next.saturating_sub(2).max(end),
            None => body.len(),
        };
        let part = &body[end..part_end];
        let (h, b) = split_head_body(part);
        entity_parts(parse_fields(h), b, depth + 1).write_to(&mut out);
        if let Some(&(next, _, _)) = delims.get(i + 1) {
            out.extend_from_slice(&body[part_end..next]);
        } else {
            // Unterminated multipart: close it so the structure is well formed.
            out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        }
    }
    out
}

fn trim_end_ws(line: &[u8]) -> &[u8] {
    let mut e = line.len();
    while e > 0 && matches!(line[e - 1], b'\r' | b'\n' | b' ' | b'\t') {
        e -= 1;
    }
    &line[..e]
}

/// Base64 in 76-column CRLF lines (RFC 2045 §6.8), each line ending in CRLF.
pub(crate) fn base64_lines(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(base64_lines_len(data.len()));
    base64_lines_into(data, &mut out);
    out
}

/// Input octets per 76-column base64 line.
const B64_LINE_IN: usize = 57;

/// Length of [`base64_lines`] output for `n` input octets.
pub(crate) fn base64_lines_len(n: usize) -> usize {
    let chars = n.div_ceil(3) * 4;
    chars + chars.div_ceil(76) * 2
}

/// The base64 alphabet (RFC 2045 §6.8, Table 1).
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The two base64 characters of every 12-bit value, first one in the low octet: one table
/// lookup per 12 input bits instead of one per 6 (8 KiB, stays in the L1 cache while a
/// message is encoded).
static B64_PAIRS: [u16; 4096] = {
    let mut t = [0u16; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = B64[i >> 6] as u16 | (B64[i & 63] as u16) << 8;
        i += 1;
    }
    t
};

/// One full line: 57 octets become 76 characters and CRLF. Six input octets at a time (one
/// 64-bit load, four lookups, one 64-bit store): plain safe code, about twice the speed of
/// the `base64` crate's engine here. The build targets baseline x86-64; where the CPU has
/// AVX2 or AVX-512 VBMI, [`base64_lines_into`] uses a vector encoder instead.
fn base64_line(src: &[u8; B64_LINE_IN], dst: &mut [u8; 78]) {
    let pair = |n: u64| u64::from(B64_PAIRS[(n & 0xfff) as usize]);
    for g in 0..B64_LINE_IN / 6 {
        // Octets 6g..6g+8 exist for every g < 9 (57 octets); the top six are this group's.
        let n = u64::from_be_bytes(src[6 * g..6 * g + 8].try_into().expect("8 octets")) >> 16;
        let v = pair(n >> 36) | pair(n >> 24) << 16 | pair(n >> 12) << 32 | pair(n) << 48;
        dst[8 * g..8 * g + 8].copy_from_slice(&v.to_le_bytes());
    }
    // The last three octets (57 = 9 x 6 + 3).
    let n = u64::from(src[54]) << 16 | u64::from(src[55]) << 8 | u64::from(src[56]);
    let v = pair(n >> 12) | pair(n) << 16;
    dst[72..76].copy_from_slice(&(v as u32).to_le_bytes());
    dst[76] = b'\r';
    dst[77] = b'\n';
}

/// [`base64_lines`] appended to `out`: each 57-octet slice of input becomes one 76-character
/// line, CRLF after each. The same bytes three ways (`cargo bench --bench smime -- pieces`,
/// 100 KB): [`vbmi::lines_into`] where the CPU has AVX-512 VBMI, [`avx2::lines_into`] where it
/// has AVX2 (about twice as fast as the scalar one), [`scalar_lines_into`] elsewhere.
pub(crate) fn base64_lines_into(data: &[u8], out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if vbmi::available() {
        // SAFETY: the CPU has the features `vbmi::lines_into` is compiled for.
        unsafe { vbmi::lines_into(data, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked on the line above.
        unsafe { avx2::lines_into(data, out) };
        return;
    }
    scalar_lines_into(data, out);
}

/// [`base64_lines_into`] without SIMD: each line encoded into a line buffer and appended (no
/// intermediate string of the whole encoding, no zero-filling of the output).
fn scalar_lines_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(base64_lines_len(data.len()));
    let mut lines = data.chunks_exact(B64_LINE_IN);
    let mut line = [0u8; 78];
    for src in lines.by_ref() {
        base64_line(src.try_into().expect("chunks_exact"), &mut line);
        out.extend_from_slice(&line);
    }
    last_line(lines.remainder(), out);
}

/// The last, shorter line (fewer than 57 octets) and its padding, from the `base64` crate.
fn last_line(rest: &[u8], out: &mut Vec<u8>) {
    if !rest.is_empty() {
        let mut line = [0u8; 78];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(rest, &mut line)
            .expect("a short line fits");
        out.extend_from_slice(&line[..n]);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line loop of the vector encoders, written straight into `out`'s spare capacity: `line`
/// encodes one full line (57 octets) into the 78 octets it is given; the last, shorter line is
/// [`last_line`]'s. Inlined into each encoder, so it is compiled with the encoder's features.
///
/// # Safety
///
/// `line` must write every one of the 78 octets it is given.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vector_lines_into(
    data: &[u8],
    out: &mut Vec<u8>,
    mut line: impl FnMut(&[u8], &mut [std::mem::MaybeUninit<u8>]),
) {
    out.reserve(base64_lines_len(data.len()));
    let mut lines = data.chunks_exact(B64_LINE_IN);
    let full = lines.len();
    let spare = &mut out.spare_capacity_mut()[..78 * full];
    for (src, dst) in lines.by_ref().zip(spare.chunks_exact_mut(78)) {
        line(src, dst);
    }
    // SAFETY: the reserve above made room for every line, and `line` wrote all 78 octets of
    // each of the `full` lines into the spare capacity, in order (the caller's promise).
    unsafe { out.set_len(out.len() + 78 * full) };
    last_line(lines.remainder(), out);
}

/// Base64 lines with AVX2: 24 octets become 32 characters in one 256-bit step (W. Mula and
/// D. Lemire, "Faster Base64 Encoding and Decoding Using AVX2 Instructions", ACM TWEB 2018:
/// a byte shuffle, two multiplies that move the 6-bit groups into octets, and a 16-entry
/// shuffle table that adds each group's offset into the alphabet). Three steps per line, at
/// octets 0, 24 and 33: the last overlaps the second by 15 octets and writes the same 20
/// characters again, so no line needs a scalar tail. Written straight into the output's
/// spare capacity. Held to the scalar encoder and to the reference by the tests below.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{B64_LINE_IN, vector_lines_into};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// [`super::base64_lines_into`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn lines_into(data: &[u8], out: &mut Vec<u8>) {
        // SAFETY: `line` writes all 78 octets of each line: three 32-octet stores covering
        // 0..76, then CR and LF.
        unsafe { vector_lines_into(data, out, |src, dst| line(src, dst)) };
    }

    /// One full line (57 octets) into 76 characters and CRLF.
    #[target_feature(enable = "avx2")]
    fn line(src: &[u8], dst: &mut [MaybeUninit<u8>]) {
        let (src, dst) = (&src[..B64_LINE_IN], &mut dst[..78]);
        for (at, to) in [(0, 0), (24, 32), (33, 44)] {
            let s = &src[at..at + 24];
            // SAFETY: each load reads 16 octets of `s`, which has 24 (bounds checked above):
            // octets 0..16 and 8..24. Unaligned loads are what `loadu` is for.
            let (lo, hi) = unsafe {
                (
                    _mm_loadu_si128(s.as_ptr().cast()),
                    _mm_loadu_si128(s[8..].as_ptr().cast()),
                )
            };
            let chars = encode24(_mm256_set_m128i(hi, lo));
            let d = &mut dst[to..to + 32];
            // SAFETY: `d` has exactly the 32 octets the store writes (bounds checked above).
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), chars) };
        }
        dst[76].write(b'\r');
        dst[77].write(b'\n');
    }

    /// 24 octets, the first 12 in octets 0..12 of the low lane and the next 12 in octets
    /// 4..16 of the high lane, into 32 base64 characters.
    #[target_feature(enable = "avx2")]
    fn encode24(v: __m256i) -> __m256i {
        // Each 32-bit word gets the octets (b1, b0, b2, b1) of its 3-octet group, so that each
        // of its four 6-bit values sits in a 16-bit half the multiplies can shift.
        let v = _mm256_shuffle_epi8(
            v,
            _mm256_setr_epi8(
                1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, //
                5, 4, 6, 5, 8, 7, 9, 8, 11, 10, 12, 11, 14, 13, 15, 14,
            ),
        );
        // Values 1 and 3 of each group (bits 10..16 and 22..28) shifted down by the high
        // multiply, values 0 and 2 (bits 4..10 and 16..22) up by the low one: one 6-bit value
        // per octet, in output order.
        let t0 = _mm256_and_si256(v, _mm256_set1_epi32(0x0fc0_fc00));
        let t1 = _mm256_mulhi_epu16(t0, _mm256_set1_epi32(0x0400_0040));
        let t2 = _mm256_and_si256(v, _mm256_set1_epi32(0x003f_03f0));
        let t3 = _mm256_mullo_epi16(t2, _mm256_set1_epi32(0x0100_0010));
        let values = _mm256_or_si256(t1, t3);
        // The alphabet in five ranges, each a constant offset from its values: 0..26 'A',
        // 26..52 'a' - 26, 52..62 '0' - 52, 62 '+' - 62, 63 '/' - 63. Saturating subtraction
        // maps 52..64 to 1..13 and everything below to 0; values under 26 are moved to 13.
        let mut range = _mm256_subs_epu8(values, _mm256_set1_epi8(51));
        let below_26 = _mm256_cmpgt_epi8(_mm256_set1_epi8(26), values);
        range = _mm256_or_si256(range, _mm256_and_si256(below_26, _mm256_set1_epi8(13)));
        const D: i8 = b'0' as i8 - 52;
        const P: i8 = b'+' as i8 - 62;
        const S: i8 = b'/' as i8 - 63;
        const A: i8 = b'A' as i8;
        const LA: i8 = b'a' as i8 - 26;
        let offsets = _mm256_setr_epi8(
            LA, D, D, D, D, D, D, D, D, D, D, P, S, A, 0, 0, //
            LA, D, D, D, D, D, D, D, D, D, D, P, S, A, 0, 0,
        );
        _mm256_add_epi8(values, _mm256_shuffle_epi8(offsets, range))
    }
}

/// Base64 lines with AVX-512 VBMI: 48 octets become 64 characters in three instructions (W.
/// Mula and D. Lemire, "Base64 encoding and decoding at almost the speed of a memory copy",
/// Software: Practice and Experience 2020): a byte permutation puts each 3-octet group in a
/// 32-bit word as (b1, b0, b2, b1), a multishift picks the four 6-bit values of each out of
/// its 64-bit word, and a second permutation looks them up in the 64-octet alphabet. Two steps
/// per line, at octets 0 and 9: the second writes characters 12..76, 52 of them again.
#[cfg(target_arch = "x86_64")]
mod vbmi {
    use super::{B64, B64_LINE_IN, vector_lines_into};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// True when the CPU has what [`lines_into`] is compiled for.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }

    /// [`super::base64_lines_into`] with AVX-512 VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) fn lines_into(data: &[u8], out: &mut Vec<u8>) {
        // SAFETY: reads the 64 octets of the alphabet, all of `B64`.
        let alphabet = unsafe { _mm512_loadu_epi8(B64.as_ptr().cast()) };
        // SAFETY: `line` writes all 78 octets of each line: two 64-octet stores covering
        // 0..76, then CR and LF.
        unsafe { vector_lines_into(data, out, |src, dst| line(src, dst, alphabet)) };
    }

    /// One full line (57 octets) into 76 characters and CRLF.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn line(src: &[u8], dst: &mut [MaybeUninit<u8>], alphabet: __m512i) {
        let (src, dst) = (&src[..B64_LINE_IN], &mut dst[..78]);
        for (at, to) in [(0, 0), (9, 12)] {
            let s = &src[at..at + 48];
            // SAFETY: the mask loads octets 0..48 of `s`, which has 48 (bounds checked above);
            // the masked-off octets are not read.
            let v = unsafe { _mm512_maskz_loadu_epi8(0x0000_ffff_ffff_ffff, s.as_ptr().cast()) };
            let chars = encode48(v, alphabet);
            let d = &mut dst[to..to + 64];
            // SAFETY: `d` has exactly the 64 octets the store writes (bounds checked above).
            unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), chars) };
        }
        dst[76].write(b'\r');
        dst[77].write(b'\n');
    }

    /// Octets 0..48 of `v` into 64 base64 characters.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn encode48(v: __m512i, alphabet: __m512i) -> __m512i {
        // Group g (octets 3g..3g+3) into word g as (b1, b0, b2, b1), low octet first.
        let groups = _mm512_permutexvar_epi8(
            _mm512_setr_epi32(
                0x0102_0001,
                0x0405_0304,
                0x0708_0607,
                0x0a0b_090a,
                0x0d0e_0c0d,
                0x1011_0f10,
                0x1314_1213,
                0x1617_1516,
                0x191a_1819,
                0x1c1d_1b1c,
                0x1f20_1e1f,
                0x2223_2122,
                0x2526_2425,
                0x2829_2728,
                0x2b2c_2a2b,
                0x2e2f_2d2e,
            ),
            v,
        );
        // Each output octet takes the 8 bits at the given offset of its 64-bit word: offsets
        // 10, 4, 22, 16 for the two groups of the word, plus 32; the lookup uses the low six.
        let values = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x3036_242a_1016_040a), groups);
        _mm512_permutexvar_epi8(values, alphabet)
    }
}

/// Quoted-printable (RFC 2045 §6.7) of CRLF text: hard line breaks stay CRLF, soft breaks keep
/// lines at 76 columns. Also escapes a leading `From ` (`=46`) and `.` (`=2E`), and trailing
/// white space, so mbox writers and dot-mangling relays cannot alter the signed bytes.
pub(crate) fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if last && line.is_empty() {
            break; // text ended with CRLF
        }
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let trailing_ws = (b == b' ' || b == b'\t') && i + 1 == line.len();
            let escape = b == b'='
                || b >= 0x7f
                || (b < 0x20 && b != b'\t')
                || trailing_ws
                || (i == 0 && b == b'.')
                || (i == 0 && b == b'F' && line.starts_with(b"From "));
            let width = if escape { 3 } else { 1 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if escape {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            } else {
                out.push(b);
            }
            col += width;
        }
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_normalisation_handles_lone_lf_and_cr() {
        assert_eq!(to_crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd");
    }

    #[test]
    fn content_fields_move_inside_others_stay_outside() {
        let s = split_message(
            b"From: a@x\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhello\r\n",
            true,
        );
        assert_eq!(s.outer, b"From: a@x\r\nSubject: hi\r\n");
        assert_eq!(
            s.entity.to_vec(),
            b"Content-Type: text/plain\r\n\r\nhello\r\n"
        );
    }

    /// A message that is only a header, its last line folded and without CRLF: the fields
    /// still end in CRLF, so a signed message's `MIME-Version` does not become part of the
    /// folded field, and the entity's header still ends in an empty line. (Found by
    /// `a_signed_messages_parts_are_what_a_parse_finds`.)
    #[test]
    fn a_header_that_ends_in_a_folded_line_without_crlf_keeps_its_fields_apart() {
        let s = split_message(b"From: a@x\r\nX-Note: one\r\n two", true);
        assert_eq!(s.outer, b"From: a@x\r\nX-Note: one\r\n two\r\n");
        let s = split_message(
            b"From: a@x\r\nContent-Type: text/plain;\r\n charset=us-ascii",
            true,
        );
        assert_eq!(s.outer, b"From: a@x\r\n");
        assert_eq!(
            s.entity.to_vec(),
            b"Content-Type: text/plain;\r\n charset=us-ascii\r\n\r\n"
        );
    }

    #[test]
    fn eight_bit_text_becomes_quoted_printable() {
        let s = split_message("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nh\u{e9}\r\nFrom here\r\n.\r\n".as_bytes(), true);
        let e = String::from_utf8(s.entity.to_vec()).unwrap();
        assert!(
            e.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{e}"
        );
        assert!(
            e.ends_with("\r\n\r\nh=C3=A9\r\n=46rom here\r\n=2E\r\n"),
            "{e}"
        );
    }

    #[test]
    fn binary_part_in_multipart_becomes_base64() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\r\n--b--\r\n";
        let e = split_message(msg, true).entity.to_vec();
        assert!(is_7bit_safe(&e));
        assert!(
            String::from_utf8_lossy(&e)
                .contains("Content-Transfer-Encoding: base64\r\n\r\nAP8=\r\n\r\n--b--")
        );
    }

    #[test]
    fn long_lines_are_wrapped() {
        let long = "x".repeat(2000);
        let e = split_message(
            format!("Content-Type: text/plain\r\n\r\n{long}").as_bytes(),
            true,
        )
        .entity
        .to_vec();
        assert!(is_7bit_safe(&e));
    }

    #[test]
    fn attached_message_is_canonicalised_inside_or_base64_when_its_header_is_8bit() {
        let inner_ok = "Subject: fwd\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nK\u{f6}ln\r\n";
        let msg = format!("Content-Type: message/rfc822\r\n\r\n{inner_ok}");
        let e = String::from_utf8(split_message(msg.as_bytes(), true).entity.to_vec()).unwrap();
        assert!(
            e.contains("Subject: fwd\r\n") && e.contains("K=C3=B6ln"),
            "{e}"
        );
        let msg = "Content-Type: message/rfc822\r\n\r\nSubject: K\u{f6}ln\r\n\r\nhi\r\n";
        let e = String::from_utf8(split_message(msg.as_bytes(), true).entity.to_vec()).unwrap();
        assert!(
            e.starts_with(
                "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            ),
            "{e}"
        );
    }

    #[test]
    fn eight_bit_preamble_is_dropped_boundaries_kept() {
        let msg = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\npr\xe9amble\r\n--zz\r\n\r\na\r\n--zz--\r\nepilogue\r\n";
        let e = split_message(msg, true).entity.to_vec();
        assert_eq!(e, b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\na\r\n--zz--\r\nepilogue\r\n");
    }

    #[test]
    fn canonical_entity_is_a_fixed_point() {
        let msg = "Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\n--q\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\u{fc}ber  \r\n--q--\r\n";
        let once = split_message(msg.as_bytes(), true).entity.to_vec();
        let twice = split_message(&once, true).entity.to_vec();
        assert_eq!(once, twice);
    }

    /// The canonicaliser and encoder as they were before issue 12's fast path: straightforward
    /// copies of the whole message at each step. The property test below holds the fast path
    /// to the same bytes.
    mod reference {
        use super::super::{
            Field, MAX_DEPTH, MAX_LINE, content_type, parse_fields, quoted_printable, set_cte,
            split_head_body, transfer_encoding, trim_end_ws,
        };
        use base64::Engine;

        /// Normalise line ends to CRLF (RFC 5322 §2.1: CR and LF only occur together as CRLF).
        pub fn to_crlf(input: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(input.len() + input.len() / 32);
            let mut rest = input;
            // Copy runs between CR/LF in bulk; only the line ends themselves are looked at.
            while let Some(p) = memchr::memchr2(b'\r', b'\n', rest) {
                out.extend_from_slice(&rest[..p]);
                out.extend_from_slice(b"\r\n");
                let skip = if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[p + skip..];
            }
            out.extend_from_slice(rest);
            out
        }

        /// Split a whole message into outer fields and the canonical entity.
        /// With `canonicalise == false` only line ends are fixed (used for already-signed entities).
        pub fn split_message(message: &[u8], canonicalise: bool) -> (Vec<u8>, Vec<u8>) {
            let msg = to_crlf(message);
            let (head, body) = split_head_body(&msg);
            let mut outer = Vec::new();
            let mut inner = Vec::new();
            for f in parse_fields(head) {
                if f.name.starts_with("content-") {
                    inner.push(f);
                } else if f.name != "mime-version" {
                    outer.extend_from_slice(&f.raw);
                }
            }
            if !inner.iter().any(|f| f.name == "content-type") {
                // RFC 2045 §5.2 default, with a charset we can stand behind when the body is 8-bit.
                let ct = if body.is_ascii() {
                    "text/plain; charset=us-ascii"
                } else if std::str::from_utf8(body).is_ok() {
                    "text/plain; charset=utf-8"
                } else {
                    "text/plain; charset=unknown-8bit"
                };
                inner.insert(0, Field::new("Content-Type", ct));
            }
            let entity = if canonicalise {
                entity_bytes(inner, body, 0)
            } else {
                join(&inner, body)
            };
            (outer, entity)
        }

        fn join(fields: &[Field], body: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(body.len() + 256);
            for f in fields {
                out.extend_from_slice(&f.raw);
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
            out
        }

        /// True when the body can cross any 7-bit relay untouched.
        pub fn is_7bit_safe(body: &[u8]) -> bool {
            body.iter().all(|&b| b != 0 && b < 0x80)
                && body.split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE + 1)
        }

        /// Canonical bytes of one entity (fields + CRLF + body).
        fn entity_bytes(mut fields: Vec<Field>, body: &[u8], depth: usize) -> Vec<u8> {
            let (mime, boundary) = content_type(&fields);
            let cte = transfer_encoding(&fields);
            if mime.starts_with("multipart/")
                && depth < MAX_DEPTH
                && let Some(b) = boundary.filter(|b| !b.is_empty())
            {
                let new_body = multipart_body(body, &b, depth);
                if cte != "7bit" {
                    // RFC 2045 §6.4: a multipart's encoding is the widest of its parts, now 7bit.
                    set_cte(&mut fields, None);
                }
                return join(&fields, &new_body);
            }
            if mime == "message/rfc822"
                && depth < MAX_DEPTH
                && !is_7bit_safe(body)
                && cte != "base64"
            {
                // Canonicalise the enclosed message; only if its header is still 8-bit do we fall back
                // to base64 (RFC 2046 §5.2.1 frowns on it, but every client reads it).
                let (h, b) = split_head_body(body);
                let inner = parse_fields(h);
                let new_body = entity_bytes(inner, b, depth + 1);
                if is_7bit_safe(&new_body) {
                    set_cte(&mut fields, None);
                    return join(&fields, &new_body);
                }
                set_cte(&mut fields, Some("base64"));
                return join(&fields, &base64_lines(&new_body));
            }
            let already_encoded = matches!(cte.as_str(), "base64" | "quoted-printable");
            if is_7bit_safe(body) && (already_encoded || !matches!(cte.as_str(), "binary")) {
                if cte == "8bit" {
                    set_cte(&mut fields, Some("7bit"));
                }
                return join(&fields, body);
            }
            // Re-encode (RFC 8551 §3.1.2). A part labelled base64/QP that is not 7-bit is mislabelled;
            // its raw octets are what we protect.
            if mime.starts_with("text/") && !matches!(cte.as_str(), "binary") && !body.contains(&0)
            {
                set_cte(&mut fields, Some("quoted-printable"));
                join(&fields, &quoted_printable(body))
            } else {
                set_cte(&mut fields, Some("base64"));
                join(&fields, &base64_lines(body))
            }
        }

        /// Walk a multipart body (RFC 2046 §5.1.1): delimiter lines are `--boundary` (trailing white
        /// space allowed), the CRLF before a delimiter belongs to it, `--boundary--` closes.
        fn multipart_body(body: &[u8], boundary: &str, depth: usize) -> Vec<u8> {
            let open = format!("--{boundary}");
            // Line start offsets of delimiter lines, with whether they close.
            let mut delims: Vec<(usize, usize, bool)> = Vec::new(); // (line start, line end incl CRLF, close)
            let mut pos = 0;
            while pos < body.len() {
                let end = memchr::memmem::find(&body[pos..], b"\r\n")
                    .map(|p| pos + p + 2)
                    .unwrap_or(body.len());
                let line = &body[pos..end];
                let trimmed = trim_end_ws(line);
                if trimmed.starts_with(open.as_bytes()) {
                    let rest = &trimmed[open.len()..];
                    if rest.is_empty() {
                        delims.push((pos, end, false));
                    } else if rest == b"--" {
                        delims.push((pos, end, true));
                        break;
                    }
                }
                pos = end;
            }
            if delims.is_empty() {
                // Not really a multipart: protect it as a leaf would be.
                return if is_7bit_safe(body) {
                    body.to_vec()
                } else {
                    base64_lines(body)
                };
            }
            let mut out = Vec::with_capacity(body.len() + 1024);
            let first = delims[0].0;
            let preamble = &body[..first];
            if is_7bit_safe(preamble) {
                out.extend_from_slice(preamble);
            }
            for (i, &(start, end, close)) in delims.iter().enumerate() {
                out.extend_from_slice(&body[start..end]);
                if close {
                    let epilogue = &body[end..];
                    if is_7bit_safe(epilogue) {
                        out.extend_from_slice(epilogue);
                    }
                    return out;
                }
                // Part runs to the CRLF before the next delimiter (or to the end when unterminated).
                let part_end = match delims.get(i + 1) {
                    Some(&(next, _, _)) => next.saturating_sub(2).max(end),
                    None => body.len(),
                };
                let part = &body[end..part_end];
                let (h, b) = split_head_body(part);
                out.extend_from_slice(&entity_bytes(parse_fields(h), b, depth + 1));
                if let Some(&(next, _, _)) = delims.get(i + 1) {
                    out.extend_from_slice(&body[part_end..next]);
                } else {
                    // Unterminated multipart: close it so the structure is well formed.
                    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                }
            }
            out
        }

        /// Base64 in 76-column CRLF lines (RFC 2045 §6.8), each line ending in CRLF.
        pub fn base64_lines(data: &[u8]) -> Vec<u8> {
            let enc = base64::engine::general_purpose::STANDARD.encode(data);
            let mut out = Vec::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
            for chunk in enc.as_bytes().chunks(76) {
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out
        }
    }

    mod agree {
        use super::super::*;
        use super::reference;
        use proptest::prelude::*;

        /// Pieces messages are made of: fields, delimiters, line ends of every kind, 8-bit,
        /// NUL, long lines.
        fn fragment() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"From: a@example.org\r\n".to_vec()),
                Just(b"Subject: hi\r\n".to_vec()),
                Just(b"MIME-Version: 1.0\r\n".to_vec()),
                Just(b"Content-Type: text/plain; charset=utf-8\r\n".to_vec()),
                Just(b"Content-Type: multipart/mixed; boundary=\"b\"\r\n".to_vec()),
                Just(b"Content-Type: multipart/alternative;\r\n\tboundary=c\r\n".to_vec()),
                Just(b"Content-Type: message/rfc822\r\n".to_vec()),
                Just(b"Content-Type: application/octet-stream\r\n".to_vec()),
                Just(b"Content-Transfer-Encoding: 8bit\r\n".to_vec()),
                Just(b"Content-Transfer-Encoding: binary\r\n".to_vec()),
                Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
                Just(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
                Just(b"--b\r\n".to_vec()),
                Just(b"--b--\r\n".to_vec()),
                Just(b"--c  \r\n".to_vec()),
                Just(b"--c--".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just("K\u{f6}ln ".as_bytes().to_vec()),
                Just(b"\0".to_vec()),
                Just(b"From here. ".to_vec()),
                Just(vec![b'x'; 999]),
                Just(vec![b'y'; 997]),
                proptest::collection::vec(any::<u8>(), 0..40),
                "[ -~]{0,80}".prop_map(String::into_bytes),
            ]
        }

        fn message() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(fragment(), 0..40).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn fast_split_equals_the_reference(m in message(), canon in any::<bool>()) {
                let fast = split_message(&m, canon);
                let (outer, entity) = reference::split_message(&m, canon);
                prop_assert_eq!(&fast.outer, &outer);
                prop_assert_eq!(fast.entity.to_vec(), entity);
            }

            #[test]
            fn fast_checks_equal_the_reference(m in message()) {
                prop_assert_eq!(is_crlf_clean(&m), reference::to_crlf(&m) == m);
                prop_assert_eq!(crlf_form(&m).into_owned(), reference::to_crlf(&m));
                prop_assert_eq!(is_7bit_safe(&m), reference::is_7bit_safe(&m));
            }

            #[test]
            fn line_wrapped_base64_equals_the_reference(
                data in proptest::collection::vec(any::<u8>(), 0..2000),
                prefix in proptest::collection::vec(any::<u8>(), 0..5),
            ) {
                let mut out = prefix.clone();
                base64_lines_into(&data, &mut out);
                prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
                prop_assert_eq!(&out[prefix.len()..], &reference::base64_lines(&data)[..]);
                prop_assert_eq!(base64_lines_len(data.len()), out.len() - prefix.len());
            }

            /// `encrypt_signed` takes a signed message apart where `sign_message` put its
            /// pieces; a parse of the same bytes (what `encrypt` does) finds the same outer
            /// fields and entity, whatever the original header held.
            #[test]
            fn a_signed_messages_parts_are_what_a_parse_finds(
                m in message(),
                detached in any::<bool>(),
            ) {
                let split = split_message(&m, true);
                let fields = if detached {
                    "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; \
                     micalg=sha-256;\r\n\tboundary=\"b\"\r\n"
                } else {
                    "Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\
                     Content-Transfer-Encoding: base64\r\n"
                };
                let mut out = crate::smime::outer_with(&split.outer, fields, 0);
                split.entity.write_to(&mut out);
                let signed = crate::smime::Signed {
                    message: std::sync::Arc::new(out),
                    outer_len: split.outer.len(),
                };
                let (outer, entity) = signed.parts();
                let parsed = split_message(signed.message(), false);
                prop_assert_eq!(outer, &parsed.outer[..]);
                prop_assert_eq!(entity, &parsed.entity.to_vec()[..]);
            }

            /// Every encoder this CPU can run, whichever `base64_lines_into` picks: the slower
            /// ones stay tested on machines that have the faster.
            #[test]
            fn every_encoder_equals_the_reference(
                data in proptest::collection::vec(any::<u8>(), 0..2000),
                prefix in proptest::collection::vec(any::<u8>(), 0..5),
            ) {
                let expected = [&prefix[..], &reference::base64_lines(&data)].concat();
                for (name, encode) in encoders() {
                    let mut out = prefix.clone();
                    encode(&data, &mut out);
                    prop_assert_eq!(&out, &expected, "{}", name);
                }
            }
        }

        /// A base64 line encoder: input, output appended to.
        type Encoder = fn(&[u8], &mut Vec<u8>);

        /// The base64 line encoders this CPU can run, by name.
        fn encoders() -> Vec<(&'static str, Encoder)> {
            let mut all: Vec<(&'static str, Encoder)> = vec![("scalar", scalar_lines_into)];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: called only in this process, on this CPU, which has AVX2.
                all.push(("avx2", |d, o| unsafe { avx2::lines_into(d, o) }));
            }
            #[cfg(target_arch = "x86_64")]
            if vbmi::available() {
                // SAFETY: called only in this process, on this CPU, which has what it needs.
                all.push(("vbmi", |d, o| unsafe { vbmi::lines_into(d, o) }));
            }
            all
        }

        /// Every 6-bit value in every position of both vector steps: a line of 57 octets
        /// whose 76 characters run through the alphabet, shifted once per character.
        #[test]
        fn every_character_in_every_position() {
            for shift in 0..64u32 {
                // 76 values v_i = (i + shift) % 64, packed four to three octets.
                let values: Vec<u32> = (0..76).map(|i| (i + shift) % 64).collect();
                let mut line = [0u8; B64_LINE_IN];
                for (g, v) in values.chunks(4).enumerate() {
                    let n = v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
                    line[3 * g..3 * g + 3].copy_from_slice(&n.to_be_bytes()[1..]);
                }
                let mut expected: Vec<u8> = values.iter().map(|&v| B64[v as usize]).collect();
                expected.extend_from_slice(b"\r\n");
                let mut out = Vec::new();
                base64_lines_into(&line, &mut out);
                assert_eq!(out, expected, "shift {shift}");
                for (name, encode) in encoders() {
                    let mut out = Vec::new();
                    encode(&line, &mut out);
                    assert_eq!(out, expected, "{name}, shift {shift}");
                }
            }
        }
    }
}
