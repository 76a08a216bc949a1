//! The queue file: one file per message, holding the message bytes and, after them, the envelope
//! as records appended in place (Postfix's queue file, in our terms).
//!
//! ```text
//! offset 0    header, 32 bytes: "CACHETQ1", the data length as 16 hex digits, spaces, "\n"
//! offset 32   the message bytes, exactly as received (data length of them)
//! then        envelope records, each "E" + 8 hex digits (JSON length) + "\n" + JSON + "\n"
//! ```
//!
//! The newest complete record is the envelope. A rewrite appends a record and syncs the file
//! (no new file, no rename within a queue); a move between queues is then one rename. A crash
//! during an append leaves an incomplete last record, which readers skip: the previous record,
//! the last one made durable, stands. The next append writes over such a tail (and truncates
//! whatever lies beyond), so a torn record never hides a later one.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::Envelope;

pub const MAGIC: &[u8; 8] = b"CACHETQ1";
pub const HEADER_LEN: u64 = 32;
/// "E" + 8 hex digits + "\n" before the JSON, "\n" after it.
const RECORD_OVERHEAD: usize = 11;
/// An envelope larger than this is not an envelope (a damaged length field).
const MAX_RECORD: usize = 64 << 20;

/// Queue files up to this length keep their blocks when emptied for reuse ([`blank`]); a longer
/// one is truncated (tmp/ then holds at most `RECYCLED_MAX` x this of zeroed space).
pub const BLANK_MAX: u64 = 256 * 1024;

/// Empties a delivered message's file for the next draft. A file of at most [`BLANK_MAX`] keeps
/// its blocks: they read as zeros from here on (`fallocate` `FALLOC_FL_ZERO_RANGE`, with
/// `KEEP_SIZE`), and the next message is written into them, so no block is freed per message
/// (on a filesystem mounted with `discard`, a trim request to the device each time) nor
/// allocated again (bitmap writes in the next commit's fsync). A longer file, or one on a
/// filesystem without zero ranges (tmpfs), is truncated to 0. Returns the length kept.
pub fn blank(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let len = file.metadata()?.len();
    if len > 0 && len <= BLANK_MAX {
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(len);
        }
    }
    file.set_len(0)?;
    Ok(0)
}

/// The header for `size` bytes of message data.
pub fn header(size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [b' '; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(format!("{size:016x}").as_bytes());
    h[31] = b'\n';
    h
}

/// The data length a header records; `None` when it is not a queue file's header.
pub fn parse_header(h: &[u8]) -> Option<u64> {
    if h.len() < HEADER_LEN as usize || &h[..8] != MAGIC || h[31] != b'\n' {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&h[8..24]).ok()?, 16).ok()
}

/// One envelope record around already serialised JSON.
pub fn record_of(json: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(json.len() + RECORD_OVERHEAD);
    let _ = writeln!(r, "E{:08x}", json.len());
    r.extend_from_slice(json);
    r.push(b'\n');
    r
}

/// A whole queue file: `data` and one envelope record of `envelope_json` (as it is, parsable
/// or not). For converting the older layout, and for tests that build damaged spools.
pub fn compose(data: &[u8], envelope_json: &[u8]) -> Vec<u8> {
    [
        &header(data.len() as u64)[..],
        data,
        &record_of(envelope_json),
    ]
    .concat()
}

pub fn record(env: &Envelope) -> io::Result<Vec<u8>> {
    Ok(record_of(
        &serde_json::to_vec(env).map_err(io::Error::other)?,
    ))
}

/// The complete records in `tail` (the bytes after the data), in order, and the offset in
/// `tail` just after the last of them.
fn records(tail: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(head) = tail.get(pos..pos + RECORD_OVERHEAD - 1) {
        let len = match (head[0], std::str::from_utf8(&head[1..9]), head[9]) {
            (b'E', Ok(hex), b'\n') => match usize::from_str_radix(hex, 16) {
                Ok(n) if n <= MAX_RECORD => n,
                _ => break,
            },
            _ => break,
        };
        let start = pos + RECORD_OVERHEAD - 1;
        match tail.get(start..start + len + 1) {
            Some(body) if body[len] == b'\n' => found.push(&body[..len]),
            _ => break,
        }
        pos = start + len + 1;
    }
    (found, pos)
}

/// What a queue file holds apart from the data.
pub struct Parsed {
    /// The data length from the header.
    pub size: u64,
    /// The newest envelope record that parses.
    pub envelope: Envelope,
    /// File offset just after the newest complete record: where the next one goes.
    pub end: u64,
}

/// The data length a queue file's header records and the file's length, once the file is
/// known to hold that much data. `InvalidData` names what is wrong: shorter than a header, not
/// a queue file, data cut short.
pub fn extent(file: &File) -> io::Result<(u64, u64)> {
    let mut head = [0u8; HEADER_LEN as usize];
    let len = file.metadata()?.len();
    if len < HEADER_LEN {
        return Err(short(len));
    }
    file.read_exact_at(&mut head, 0)?;
    Ok((data_len(&head, len)?, len))
}

fn short(len: u64) -> io::Error {
    invalid(format!(
        "the queue file is {len} bytes, shorter than its header"
    ))
}

/// The data length `head` records, checked against the file's length `len`.
fn data_len(head: &[u8], len: u64) -> io::Result<u64> {
    let size = parse_header(head).ok_or_else(|| {
        invalid("not a queue file (no CACHETQ1 header; written by hand or by an older cachet?)")
    })?;
    if HEADER_LEN.checked_add(size).is_none_or(|end| end > len) {
        return Err(invalid(format!(
            "message data cut short: the header says {size} bytes, the file holds {}",
            len - HEADER_LEN
        )));
    }
    Ok(size)
}

/// Reads a queue file's header and records (not the data). `InvalidData` names what is wrong:
/// those of [`extent`], or no readable envelope record.
pub fn read(file: &File) -> io::Result<Parsed> {
    let (size, len) = extent(file)?;
    let data_end = HEADER_LEN + size;
    let mut tail = vec![0u8; (len - data_end) as usize];
    file.read_exact_at(&mut tail, data_end)?;
    newest(size, &tail)
}

/// [`read`] of a small queue file of `len` octets (its length, known to the caller) in one
/// system call (a `preadv` into two buffers): its header and records, and the rest of the file
/// after the header, whose first `size` octets are the data, in place, with nothing to move.
/// The same checks and the same answers as [`read`].
pub fn read_whole(file: &File, len: u64) -> io::Result<(Parsed, Vec<u8>)> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    if len < HEADER_LEN {
        return Err(short(len));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    let mut rest = vec![0u8; (len - HEADER_LEN) as usize];
    let mut parts = [IoSliceMut::new(&mut head), IoSliceMut::new(&mut rest)];
    // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` on Unix (std's guarantee); both
    // point into buffers alive for the call, which the kernel writes within their lengths.
    let n = unsafe { libc::preadv(file.as_raw_fd(), parts.as_mut_ptr().cast(), 2, 0) };
    // A short read (or an interrupted one, n < 0) is finished piece by piece.
    let n = n.max(0) as u64;
    if n < HEADER_LEN {
        file.read_exact_at(&mut head[n as usize..], n)?;
        file.read_exact_at(&mut rest, HEADER_LEN)?;
    } else if n < len {
        file.read_exact_at(&mut rest[(n - HEADER_LEN) as usize..], n)?;
    }
    let size = data_len(&head, len)?;
    let parsed = newest(size, &rest[size as usize..])?;
    Ok((parsed, rest))
}

/// The newest envelope record in `tail` (the bytes after `size` octets of data) that parses; an
/// older one if the newest is damaged (a duplicate delivery is possible then, a loss is not).
fn newest(size: u64, tail: &[u8]) -> io::Result<Parsed> {
    let data_end = HEADER_LEN + size;
    let (found, end) = records(tail);
    let mut last_error = None;
    for json in found.iter().rev() {
        match serde_json::from_slice::<Envelope>(json) {
            Ok(envelope) => {
                return Ok(Parsed {
                    size,
                    envelope,
                    end: data_end + end as u64,
                });
            }
            Err(e) => last_error = last_error.or(Some(e.to_string())),
        }
    }
    Err(invalid(match last_error {
        Some(e) => format!("no envelope record parses: {e}"),
        None => "no complete envelope record".to_string(),
    }))
}

/// Writes `parts` one after the other from `offset`, in one `pwritev(2)` where the kernel
/// takes them all at once (a regular file does, short of a full disk): a commit writes its
/// header, the message's last bytes and the first envelope record in one system call.
pub fn write_parts_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix (std's guarantee);
        // each points into a slice of `parts`, alive for the call, which the kernel only reads.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

/// Appends `rec` at `end` (the end of the last complete record), cuts anything beyond, and
/// makes it durable. On failure the file is cut back to `end`: readers see the old envelope.
pub fn append(file: &File, end: u64, rec: &[u8]) -> io::Result<()> {
    let written = (|| {
        file.write_all_at(rec, end)?;
        let new_end = end + rec.len() as u64;
        if file.metadata()?.len() > new_end {
            file.set_len(new_end)?;
        }
        file.sync_data()
    })();
    if written.is_err() {
        let _ = file.set_len(end);
    }
    written
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_at_a_torn_tail() {
        let a = record_of(b"{\"a\":1}");
        let b = record_of(b"{\"b\":2}");
        let mut tail = [a.clone(), b.clone()].concat();
        let (found, end) = records(&tail);
        assert_eq!(found, [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(end, tail.len());
        tail.truncate(tail.len() - 3);
        let (found, end) = records(&tail);
        assert_eq!(found, [&b"{\"a\":1}"[..]]);
        assert_eq!(end, a.len());
        // A length field of garbage, or one too long for the file, ends the list too.
        let (found, _) = records(b"Ezzzzzzzz\n{}\n");
        assert!(found.is_empty());
        let (found, _) = records(b"E000000ff\n{}\n");
        assert!(found.is_empty());
    }

    /// The parts land one after the other from the offset, empty ones included, as separate
    /// writes would put them; what was there before the offset stays.
    #[test]
    fn parts_are_written_in_order_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let big = vec![b'b'; 70_000];
        write_parts_at(&f, &[b"head", b"", &big, b"E\n"], 4).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..4], b"0123");
        assert_eq!(&got[4..8], b"head");
        assert_eq!(&got[8..8 + big.len()], &big[..]);
        assert_eq!(&got[8 + big.len()..], b"E\n");
        write_parts_at(&f, &[], 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), got);
    }

    /// A queue file read whole parses as the piecewise read does, its damage reads the same, and
    /// what comes after the header is the data followed by the records.
    #[test]
    fn a_whole_file_parses_as_the_file_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let env = Envelope::new(
            "a@example.org".into(),
            vec!["b@example.net".into()],
            "127.0.0.1".into(),
            "client".into(),
        );
        let json = serde_json::to_vec(&env).unwrap();
        let whole = compose(b"Subject: x\r\n\r\nbody\r\n", &json);
        let mut cases = vec![whole.clone(), whole[..20].to_vec(), whole[..40].to_vec()];
        cases.push([&whole[..], b"E00000100\n{\"id\":\""].concat());
        cases.push([b"XXXXXXXX", &whole[8..]].concat());
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let from_file = read(&File::open(&path).unwrap());
            let from_memory = read_whole(&File::open(&path).unwrap(), bytes.len() as u64);
            match (from_file, from_memory) {
                (Ok(a), Ok((b, rest))) => {
                    assert_eq!((a.size, a.end), (b.size, b.end));
                    assert_eq!(a.envelope.id, b.envelope.id);
                    assert_eq!(rest, &bytes[HEADER_LEN as usize..]);
                }
                (Err(a), Err(b)) => {
                    assert_eq!((a.kind(), a.to_string()), (b.kind(), b.to_string()))
                }
                (a, b) => panic!("file {:?}, memory {:?}", a.is_ok(), b.is_ok()),
            }
        }
    }

    #[test]
    fn header_round_trip() {
        assert_eq!(parse_header(&header(0)), Some(0));
        assert_eq!(parse_header(&header(10 << 20)), Some(10 << 20));
        assert_eq!(
            parse_header(b"{\"id\": \"x\"}                     \n"),
            None
        );
    }

    /// Where the filesystem has zero ranges (probed on a scratch file beside it), `blank` keeps
    /// a small file's length and its blocks, all zeros; where it has none (tmpfs), it
    /// truncates. Larger files are truncated everywhere.
    #[test]
    fn blank_keeps_the_blocks_where_zero_ranges_exist() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut probe = File::create(dir.path().join("probe")).unwrap();
        probe.write_all(&[1; 4096]).unwrap();
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let zero_ranges = unsafe {
            libc::fallocate(
                probe.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        } == 0;
        let filled = |name: &str, len: usize| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![b'm'; len]).unwrap();
            let f = File::options().read(true).write(true).open(&path).unwrap();
            f.sync_all().unwrap();
            (path, f)
        };
        let (path, f) = filled("small", 5000);
        let blocks = f.metadata().unwrap().blocks();
        assert!(blocks > 0);
        let kept = blank(&f).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        if zero_ranges {
            assert_eq!((kept, meta.len()), (5000, 5000));
            assert_eq!(meta.blocks(), blocks, "the blocks stay allocated");
        } else {
            assert_eq!((kept, meta.len()), (0, 0));
        }
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        let (path, f) = filled("large", BLANK_MAX as usize + 1);
        assert_eq!(blank(&f).unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
