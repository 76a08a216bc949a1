//! BER to DER for the CMS that arrives (X.690 §8 -> §10), before the `cms` crate reads it.
//!
//! Every mail client we tested (Thunderbird/NSS, Outlook, Apple Mail, KMail/gpgsm) writes its
//! CMS in BER with indefinite lengths (`30 80 .. 00 00`) and chunked (constructed) OCTET
//! STRINGs; the `der` crate reads DER only. This module parses any BER TLV tree into [`Node`]s
//! and writes it back with definite, minimal lengths, turning universal constructed OCTET
//! STRINGs into one primitive string. Primitive contents are copied unchanged, so a DER input
//! (certificates, the DER signed attributes a signature covers) comes out byte for byte.
//!
//! Where an OCTET STRING is IMPLICITLY tagged (`encryptedContent [0] IMPLICIT`), BER alone
//! cannot tell a chunked string from an explicit tag: callers that know the schema flatten
//! such a node with [`Node::flatten_octets`].
//!
//! Bounded: nesting depth, node count and lengths are checked against the input before any
//! allocation, so hostile input costs at most a few times its own size and never recurses
//! without limit.

use std::borrow::Cow;

/// Why the bytes are not BER we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BerError {
    /// Ran out of input inside a header or contents.
    Truncated,
    /// Nested deeper than the limit.
    TooDeep,
    /// More TLVs than the limit.
    TooManyNodes,
    /// A length or tag form BER does not allow (or we do not, e.g. lengths over 4 GiB).
    Malformed(&'static str),
    /// Bytes after the outermost value.
    TrailingData,
}

impl std::fmt::Display for BerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BerError::Truncated => write!(f, "truncated ASN.1"),
            BerError::TooDeep => write!(f, "ASN.1 nested too deeply"),
            BerError::TooManyNodes => write!(f, "too many ASN.1 elements"),
            BerError::Malformed(what) => write!(f, "malformed ASN.1: {what}"),
            BerError::TrailingData => write!(f, "data after the ASN.1 value"),
        }
    }
}

/// Deepest nesting we follow. CMS with certificates needs about 15.
pub const MAX_DEPTH: usize = 48;

/// One TLV. `tag` holds the identifier octets as written (constructed bit included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub tag: Vec<u8>,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Primitive(Cow<'a, [u8]>),
    Constructed(Vec<Node<'a>>),
}

const CONSTRUCTED: u8 = 0x20;
const OCTET_STRING: u8 = 0x04;

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    nodes: usize,
    max_nodes: usize,
}

/// Parse one BER value covering all of `input`; `max_nodes` bounds the element count.
pub fn parse(input: &[u8], max_nodes: usize) -> Result<Node<'_>, BerError> {
    let mut p = Parser {
        input,
        pos: 0,
        nodes: 0,
        max_nodes,
    };
    let node = p.node(0)?;
    // Some writers pad base64 bodies with zero octets after the value: tolerate EOC-like
    // zero padding only.
    if input[p.pos..].iter().any(|&b| b != 0) {
        return Err(BerError::TrailingData);
    }
    Ok(node)
}

/// BER in, DER-length out (see the module header).
pub fn to_der(input: &[u8], max_nodes: usize) -> Result<Vec<u8>, BerError> {
    Ok(parse(input, max_nodes)?.to_der())
}

impl<'a> Parser<'a> {
    fn byte(&mut self) -> Result<u8, BerError> {
        let b = *self.input.get(self.pos).ok_or(BerError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Identifier octets (X.690 §8.1.2), high tag numbers included.
    fn tag(&mut self) -> Result<Vec<u8>, BerError> {
        let first = self.byte()?;
        let mut tag = vec![first];
        if first & 0x1f == 0x1f {
            loop {
                let b = self.byte()?;
                tag.push(b);
                if tag.len() > 6 {
                    return Err(BerError::Malformed("tag number too large"));
                }
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        Ok(tag)
    }

    /// Length octets: `None` for the indefinite form (X.690 §8.1.3).
    fn length(&mut self) -> Result<Option<usize>, BerError> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(Some(first as usize));
        }
        if first == 0x80 {
            return Ok(None);
        }
        let n = (first & 0x7f) as usize;
        if n > 4 {
            return Err(BerError::Malformed("length over 4 GiB"));
        }
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | self.byte()? as usize;
        }
        Ok(Some(len))
    }

    fn node(&mut self, depth: usize) -> Result<Node<'a>, BerError> {
        if depth > MAX_DEPTH {
            return Err(BerError::TooDeep);
        }
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(BerError::TooManyNodes);
        }
        let tag = self.tag()?;
        let constructed = tag[0] & CONSTRUCTED != 0;
        let len = self.length()?;
        let value = match (constructed, len) {
            (false, None) => return Err(BerError::Malformed("indefinite primitive")),
            (false, Some(len)) => {
                let end = self.pos.checked_add(len).ok_or(BerError::Truncated)?;
                let content = self.input.get(self.pos..end).ok_or(BerError::Truncated)?;
                self.pos = end;
                Value::Primitive(Cow::Borrowed(content))
            }
            (true, Some(len)) => {
                let end = self.pos.checked_add(len).ok_or(BerError::Truncated)?;
                if end > self.input.len() {
                    return Err(BerError::Truncated);
                }
                let mut children = Vec::new();
                while self.pos < end {
                    children.push(self.node(depth + 1)?);
                }
                if self.pos != end {
                    return Err(BerError::Malformed("element overruns its parent"));
                }
                Value::Constructed(children)
            }
            (true, None) => {
                let mut children = Vec::new();
                loop {
                    if self.input.get(self.pos..self.pos + 2) == Some(&[0, 0]) {
                        self.pos += 2;
                        break;
                    }
                    if self.pos >= self.input.len() {
                        return Err(BerError::Truncated);
                    }
                    children.push(self.node(depth + 1)?);
                }
                Value::Constructed(children)
            }
        };
        let mut node = Node { tag, value };
        // X.690 §8.7.3: a constructed universal OCTET STRING is the concatenation of its
        // segments; DER (§10.2) wants the primitive form.
        if node.tag == [OCTET_STRING | CONSTRUCTED] {
            node.flatten_octets(OCTET_STRING)?;
        }
        Ok(node)
    }
}

impl<'a> Node<'a> {
    /// The contents of a primitive node.
    pub fn primitive(&self) -> Option<&[u8]> {
        match &self.value {
            Value::Primitive(c) => Some(c),
            Value::Constructed(_) => None,
        }
    }

    /// The children of a constructed node (empty for a primitive one).
    pub fn children(&self) -> &[Node<'a>] {
        match &self.value {
            Value::Constructed(c) => c,
            Value::Primitive(_) => &[],
        }
    }

    pub fn children_mut(&mut self) -> Option<&mut Vec<Node<'a>>> {
        match &mut self.value {
            Value::Constructed(c) => Some(c),
            Value::Primitive(_) => None,
        }
    }

    /// Turn a chunked string (constructed, segments are OCTET STRINGs) into one primitive
    /// string with identifier octet `primitive_tag`. A node that is already primitive only
    /// has its tag set.
    pub fn flatten_octets(&mut self, primitive_tag: u8) -> Result<(), BerError> {
        if let Value::Constructed(children) = &self.value {
            let mut out = Vec::new();
            for c in children {
                if c.tag != [OCTET_STRING] {
                    return Err(BerError::Malformed("string segment is not an OCTET STRING"));
                }
                out.extend_from_slice(c.primitive().unwrap_or(&[]));
            }
            self.value = Value::Primitive(Cow::Owned(out));
        }
        self.tag = vec![primitive_tag];
        Ok(())
    }

    /// Length of the DER encoding.
    pub fn encoded_len(&self) -> usize {
        let content = self.content_len();
        self.tag.len() + length_octets(content) + content
    }

    fn content_len(&self) -> usize {
        match &self.value {
            Value::Primitive(c) => c.len(),
            Value::Constructed(children) => children.iter().map(Node::encoded_len).sum(),
        }
    }

    /// Definite-length encoding.
    pub fn to_der(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag);
        write_length(out, self.content_len());
        match &self.value {
            Value::Primitive(c) => out.extend_from_slice(c),
            Value::Constructed(children) => {
                for c in children {
                    c.write(out);
                }
            }
        }
    }
}

fn length_octets(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - len.leading_zeros() as usize / 8)
    }
}

fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_passes_through_unchanged() {
        // SEQUENCE { INTEGER 5, OCTET STRING 200 x 'a' }
        let mut der = vec![0x30, 0x81, 0xce, 0x02, 0x01, 0x05, 0x04, 0x81, 0xc8];
        der.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(to_der(&der, 100).unwrap(), der);
    }

    #[test]
    fn indefinite_lengths_and_chunked_strings_become_der() {
        // SEQUENCE (indef) { OCTET STRING (constructed, indef) { "ab", "cd" } }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x02, b'c', b'd', 0x00, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(
            to_der(&ber, 100).unwrap(),
            [0x30, 0x06, 0x04, 0x04, b'a', b'b', b'c', b'd']
        );
    }

    #[test]
    fn implicit_chunked_string_is_flattened_on_request() {
        let ber = [0xa0, 0x80, 0x04, 0x01, b'x', 0x04, 0x01, b'y', 0x00, 0x00];
        let mut n = parse(&ber, 10).unwrap();
        n.flatten_octets(0x80).unwrap();
        assert_eq!(n.to_der(), [0x80, 0x02, b'x', b'y']);
    }

    #[test]
    fn hostile_input_is_refused_not_followed() {
        assert_eq!(to_der(&[0x30, 0x05, 0x02], 10), Err(BerError::Truncated));
        assert_eq!(
            to_der(&[0x30, 0x80, 0x02, 0x01], 10),
            Err(BerError::Truncated)
        );
        assert_eq!(
            to_der(&[0x04, 0x80, 0x00, 0x00], 10),
            Err(BerError::Malformed("indefinite primitive"))
        );
        assert!(matches!(
            to_der(&[0x30, 0x85, 1, 0, 0, 0, 0], 10),
            Err(BerError::Malformed(_))
        ));
        // 10,000 nested indefinite SEQUENCEs: refused at the depth limit, no stack overflow.
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        assert_eq!(to_der(&deep, usize::MAX), Err(BerError::TooDeep));
        // Many small elements: refused at the node limit.
        let mut wide = vec![0x30, 0x80];
        for _ in 0..1000 {
            wide.extend_from_slice(&[0x05, 0x00]);
        }
        wide.extend_from_slice(&[0, 0]);
        assert_eq!(to_der(&wide, 500), Err(BerError::TooManyNodes));
        assert_eq!(to_der(&[0x05, 0x00, 0x05], 10), Err(BerError::TrailingData));
    }

    #[test]
    fn long_lengths_round_trip() {
        for len in [0usize, 127, 128, 255, 256, 65_535, 65_536, 1 << 24] {
            let mut out = Vec::new();
            write_length(&mut out, len);
            assert_eq!(out.len(), length_octets(len), "{len}");
            let mut p = Parser {
                input: &out,
                pos: 0,
                nodes: 0,
                max_nodes: 1,
            };
            assert_eq!(p.length().unwrap(), Some(len));
        }
    }
}
