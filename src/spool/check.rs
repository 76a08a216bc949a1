//! The data check: a message's bytes against the length and CRC-32 its envelope recorded at
//! commit, read inline or on the blocking pool by size, through the message lock where the
//! attempt holds one ([`Spool::read_checked`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{DataError, Envelope, INLINE_READ_MAX, MessageLock, Queue, Spool, file};
use crate::hex::lower as hex;

/// What an envelope recorded at commit to check its message data against.
struct Recorded {
    pub(super) size: u64,
    crc32: Option<u32>,
    /// An older version's record (before `data_crc32`).
    sha256: Option<String>,
}

impl Recorded {
    pub(super) fn of(env: &Envelope) -> Self {
        Recorded {
            size: env.size,
            crc32: env.data_crc32,
            sha256: env.data_sha256.clone(),
        }
    }

    pub(super) fn checked(&self) -> bool {
        self.crc32.is_some() || self.sha256.is_some()
    }

    /// `Err` names what does not match (the reason logged with the move to corrupt/).
    pub(super) fn check(&self, data: &[u8]) -> Result<(), String> {
        if let Some(want) = self.crc32
            && crc32fast::hash(data) != want
        {
            return Err("message data does not match the CRC-32 the envelope recorded".into());
        }
        if let Some(want) = &self.sha256 {
            let got = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
            if !got.eq_ignore_ascii_case(want) {
                return Err("message data does not match the SHA-256 the envelope recorded".into());
            }
        }
        Ok(())
    }
}

impl Spool {
    /// The message bytes, checked against what the envelope recorded at commit (length and
    /// CRC-32, or an older version's SHA-256; envelopes with neither are not checked). A
    /// message of at most [`INLINE_READ_MAX`] is read and checked where the caller is (a
    /// page-cache read of a few microseconds, as the envelope's own load is); a larger one on
    /// the blocking pool. Read inline through `held`'s file when it is the message's lock in
    /// `q`.
    pub async fn read_checked(
        &self,
        q: Queue,
        env: &Envelope,
        held: Option<&MessageLock>,
    ) -> Result<Vec<u8>, DataError> {
        if env.size <= INLINE_READ_MAX {
            if let Some(whole) = held.and_then(|l| l.take_whole(q)) {
                return checked_whole(whole, &Recorded::of(env));
            }
            if let Some(f) = held.and_then(|l| l.file_in(q)) {
                return read_checked_from(f, &Recorded::of(env));
            }
            return self.read_checked_blocking(q, &env.id, &Recorded::of(env));
        }
        let this = self.clone();
        let (id, recorded) = (env.id.clone(), Recorded::of(env));
        tokio::task::spawn_blocking(move || this.read_checked_blocking(q, &id, &recorded))
            .await
            .map_err(|e| DataError::Io(io::Error::other(e)))?
    }

    fn read_checked_blocking(
        &self,
        q: Queue,
        id: &str,
        recorded: &Recorded,
    ) -> Result<Vec<u8>, DataError> {
        let f = match File::open(self.queue_path(q, id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataError::Damaged("queue file missing".into()));
            }
            Err(e) => return Err(DataError::Io(e)),
        };
        read_checked_from(&f, recorded)
    }
}

/// The message bytes of the open queue file `f`, checked against `recorded`.
fn read_checked_from(f: &File, recorded: &Recorded) -> Result<Vec<u8>, DataError> {
    let (stored, _) = file::extent(f).map_err(damaged_or_io)?;
    size_matches(stored, recorded)?;
    let mut data = vec![0; stored as usize];
    f.read_exact_at(&mut data, file::HEADER_LEN)
        .map_err(DataError::Io)?;
    recorded.check(&data).map_err(DataError::Damaged)?;
    Ok(data)
}

/// [`read_checked_from`] of a file already read whole ([`MessageLock::read`]): `stored`
/// octets of data at the front of `rest` (the records after them are cut off), the same checks.
fn checked_whole(
    (stored, mut rest): (u64, Vec<u8>),
    recorded: &Recorded,
) -> Result<Vec<u8>, DataError> {
    size_matches(stored, recorded)?;
    rest.truncate(stored as usize);
    recorded.check(&rest).map_err(DataError::Damaged)?;
    Ok(rest)
}

fn damaged_or_io(e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            DataError::Damaged(e.to_string())
        }
        _ => DataError::Io(e),
    }
}

/// Envelopes written by hand (no check recorded) are taken as they are.
fn size_matches(stored: u64, recorded: &Recorded) -> Result<(), DataError> {
    let size = recorded.size;
    if recorded.checked() && stored != size {
        return Err(DataError::Damaged(format!(
            "message data is {stored} bytes, the envelope says {size}"
        )));
    }
    Ok(())
}
