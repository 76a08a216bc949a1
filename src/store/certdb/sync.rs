//! `certificates.dir` into the database, at load and on every reload, without reading files
//! that have not changed.
//!
//! A file is known by its name, size and mtime (nanoseconds). The database's file list is read
//! into memory as a sorted array of name hashes with size and mtime (32 bytes a file), the directory
//! is read once: an unchanged file costs one `stat`; a new or changed one is parsed and its
//! certificates (re)linked, in transactions of [`BATCH`] files; a file no longer there drops its
//! links, and a certificate that nothing holds any more (no file, not imported, not harvested)
//! is deleted. Then the certificates whose verdict may have changed are checked again: those
//! read in this sync, those that had a problem, those that expired since, and all of them when
//! the trust anchors or intermediates changed. The stored problems are what `cachet check` and
//! the load log report; lookups always validate afresh.

use std::path::Path;
use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};
use rustls_pki_types::CertificateDer;

use super::{Pool, collect_garbage, secs, upsert_cert};
use crate::store::validate::{self, NO_RFC822_NAME};
use crate::store::{CertStore, Problem};

/// Files per write transaction while importing.
const BATCH: usize = 2000;

/// What the file list held for one name.
struct Known {
    hash: u64,
    id: i64,
    size: i64,
    mtime: i64,
}

/// FNV-1a, 64 bits: a stable hash of a file name (the file list in memory holds no names).
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn certificate_file(name: &str) -> bool {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(ext.as_str(), "pem" | "crt" | "cer" | "der")
}

impl CertStore {
    /// Bring the database up to date with `dir` (when given), read the intermediates, check
    /// again what needs it, and return every stored problem of the directory's files.
    pub(crate) fn sync(&mut self, dir: Option<&Path>, now: SystemTime) -> Vec<Problem> {
        let Some(pool) = &self.db else {
            return Vec::new();
        };
        let db = pool.path().to_path_buf();
        let mut problems = Vec::new();
        let mut recheck: Vec<i64> = Vec::new();
        if let Some(dir) = dir
            && let Err(e) = sync_files(pool, dir, now, &mut recheck)
        {
            problems.push(Problem::new(dir, e));
        }
        self.reload_intermediates();
        if let Err(e) = self.recheck(&mut recheck, now) {
            problems.push(Problem::new(&db, e));
        }
        if let Some(dir) = dir {
            match self.file_problems(dir) {
                Ok(p) => problems.extend(p),
                Err(e) => problems.push(Problem::new(&db, e)),
            }
        }
        problems
    }

    /// Validate again the certificates in `ids`, plus those with a stored problem, those that
    /// expired since, and all when the anchors or intermediates differ from last time; store
    /// each verdict.
    fn recheck(&self, ids: &mut Vec<i64>, now: SystemTime) -> Result<(), String> {
        let Some(pool) = &self.db else { return Ok(()) };
        let mut c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let trust_hash = {
            let mut all = Vec::new();
            for d in self.trust.certs.iter().chain(&self.intermediates) {
                all.extend_from_slice(&super::fingerprint(d));
            }
            crate::store::hex(&super::fingerprint(&all))
        };
        let last: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = 'trust'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(e)?;
        // Everything when anchors or intermediates changed; else what may have changed verdict:
        // a problem that might be fixed (not expiry), and certificates that expired since.
        let sql = if last.as_deref() != Some(trust_hash.as_str()) {
            "SELECT id FROM certs WHERE is_ca = 0 AND ?1 = ?1"
        } else {
            "SELECT id FROM certs WHERE problem IS NOT NULL AND not_after >= ?1
             UNION ALL SELECT id FROM certs WHERE problem IS NULL AND not_after < ?1"
        };
        {
            let mut q = c.prepare(sql).map_err(e)?;
            let rows = q
                .query_map([secs(now)], |r| r.get::<_, i64>(0))
                .map_err(e)?;
            for id in rows {
                ids.push(id.map_err(e)?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(BATCH) {
            let tx = c.transaction().map_err(e)?;
            {
                let mut get = tx
                    .prepare_cached(
                        "SELECT der, chain, approved, pending FROM certs WHERE id = ?1 AND is_ca = 0",
                    )
                    .map_err(e)?;
                let mut set = tx
                    .prepare_cached("UPDATE certs SET problem = ?2 WHERE id = ?1")
                    .map_err(e)?;
                for id in chunk {
                    let row = get
                        .query_row([id], |r| {
                            Ok((
                                r.get::<_, Vec<u8>>(0)?,
                                r.get::<_, Option<Vec<u8>>>(1)?,
                                r.get::<_, bool>(2)?,
                                r.get::<_, bool>(3)?,
                            ))
                        })
                        .optional()
                        .map_err(e)?;
                    let Some((der, chain, approved, pending)) = row else {
                        continue;
                    };
                    let der = CertificateDer::from(der);
                    let problem = match validate::inspect(&der) {
                        Ok(info) => {
                            let chain = chain
                                .as_deref()
                                .map(super::decode_chain)
                                .unwrap_or_default();
                            self.judge(&der, &info, &chain, approved, pending, now)
                                .err()
                        }
                        Err(reason) => Some(reason),
                    };
                    set.execute(params![id, problem]).map_err(e)?;
                }
            }
            tx.commit().map_err(e)?;
        }
        c.execute(
            "INSERT INTO meta(key, value) VALUES('trust', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [&trust_hash],
        )
        .map_err(e)?;
        Ok(())
    }

    /// The stored problems of the directory's files and of the certificates in them, one per
    /// certificate (named by its first file), in file order.
    fn file_problems(&self, dir: &Path) -> Result<Vec<Problem>, String> {
        let Some(pool) = &self.db else {
            return Ok(Vec::new());
        };
        let c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let mut out: Vec<(String, String)> = Vec::new();
        let mut q = c
            .prepare("SELECT name, problem FROM files WHERE problem IS NOT NULL")
            .map_err(e)?;
        for row in q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(e)?
        {
            let (name, problem) = row.map_err(e)?;
            for line in problem.lines() {
                out.push((name.clone(), line.to_string()));
            }
        }
        let mut q = c
            .prepare(
                "SELECT (SELECT f.name FROM file_certs fc JOIN files f ON f.id = fc.file
                         WHERE fc.cert = c.id ORDER BY f.name LIMIT 1),
                        c.der, c.problem
                 FROM certs c WHERE c.problem IS NOT NULL AND c.is_ca = 0",
            )
            .map_err(e)?;
        for row in q
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(e)?
        {
            let (name, der, problem) = row.map_err(e)?;
            let Some(name) = name else { continue };
            let text = match validate::inspect(&der) {
                Ok(info) => format!(
                    "certificate {} for {}: {problem}",
                    info.fingerprint,
                    info.emails.join(", ")
                ),
                Err(_) => problem,
            };
            out.push((name, text));
        }
        out.sort();
        Ok(out
            .into_iter()
            .map(|(name, reason)| Problem::new(&dir.join(name), reason))
            .collect())
    }
}

/// The file half of the sync: new, changed and removed files; the ids of certificates read
/// go to `recheck`.
fn sync_files(
    pool: &Pool,
    dir: &Path,
    now: SystemTime,
    recheck: &mut Vec<i64>,
) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read certificate directory: {e}"))?;
    let mut c = pool.get()?;
    let e = |x: rusqlite::Error| pool.error(x);
    // By its canonical name, so `--config cachet.toml` and an absolute path agree.
    let dir_name = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string();
    let last_dir: Option<String> = c
        .query_row("SELECT value FROM meta WHERE key = 'dir'", [], |r| r.get(0))
        .optional()
        .map_err(e)?;
    if last_dir.as_deref() != Some(dir_name.as_str()) {
        // Another directory: every file is read again (same names may hold other certificates).
        c.execute("UPDATE files SET mtime = -1", []).map_err(e)?;
        c.execute(
            "INSERT INTO meta(key, value) VALUES('dir', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [&dir_name],
        )
        .map_err(e)?;
    }
    // The file list as a sorted array of name hashes (32 bytes a file, no names held); two
    // names with one hash are both read again.
    let count: i64 = c
        .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
        .map_err(e)?;
    let mut known: Vec<Known> = Vec::with_capacity(count.max(0) as usize);
    {
        let mut q = c
            .prepare("SELECT id, name, size, mtime FROM files")
            .map_err(e)?;
        let mut rows = q.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let name = r.get_ref(1).map_err(e)?.as_str().unwrap_or("");
            known.push(Known {
                hash: name_hash(name),
                id: r.get(0).map_err(e)?,
                size: r.get(2).map_err(e)?,
                mtime: r.get(3).map_err(e)?,
            });
        }
    }
    known.sort_unstable_by_key(|k| k.hash);
    let mut collided: Vec<i64> = Vec::new();
    for w in known.windows(2) {
        if w[0].hash == w[1].hash {
            collided.extend([w[0].id, w[1].id]);
        }
    }
    if !collided.is_empty() {
        collided.sort_unstable();
        collided.dedup();
        known.retain(|k| collided.binary_search(&k.id).is_err());
    }
    let mut seen = vec![false; known.len()];
    // A radix index over the sorted hashes (the top bits pick a bucket, about one entry
    // each): a lookup is two memory reads instead of a 20-step binary search.
    let bits = (usize::BITS - known.len().max(1).leading_zeros()).min(22);
    let bucket = |h: u64| (h >> (64 - bits)) as usize;
    let mut starts = vec![0u32; (1usize << bits) + 1];
    for k in &known {
        starts[bucket(k.hash) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let find = |h: u64| -> Option<usize> {
        let b = bucket(h);
        (starts[b] as usize..starts[b + 1] as usize).find(|&i| known[i].hash == h)
    };
    let now_s = secs(now);
    let mut batch = 0usize;
    let mut tx = c.transaction().map_err(e)?;
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !certificate_file(&name) {
            continue;
        }
        let path = entry.path();
        // One fstatat on the directory's descriptor; a symbolic link is followed, as reading
        // the file does.
        let meta = match entry.file_type() {
            Ok(t) if t.is_symlink() => std::fs::metadata(&path),
            _ => entry.metadata(),
        };
        let Ok(meta) = meta else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let size = meta.len() as i64;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let h = name_hash(&name);
        if let Some(i) = find(h) {
            seen[i] = true;
            if known[i].size == size && known[i].mtime == mtime {
                continue;
            }
        }
        read_file(&tx, &path, &name, size, mtime, now_s, recheck).map_err(e)?;
        batch += 1;
        if batch >= BATCH {
            tx.commit().map_err(e)?;
            tx = c.transaction().map_err(e)?;
            batch = 0;
        }
    }
    // Removed files (and names whose hash collided: kept only if still there).
    drop(starts);
    let gone: Vec<i64> = known
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(k, _)| k.id)
        .chain(collided)
        .collect();
    drop(known);
    drop(seen);
    for id in gone {
        let name: Option<String> = tx
            .query_row("SELECT name FROM files WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(e)?;
        if let Some(name) = &name
            && dir.join(name).is_file()
        {
            // A collided name that is still there: read it again.
            let meta = std::fs::metadata(dir.join(name)).ok();
            let size = meta.as_ref().map(|m| m.len() as i64).unwrap_or(0);
            read_file(&tx, &dir.join(name), name, size, -1, now_s, recheck).map_err(e)?;
            continue;
        }
        let certs: Vec<i64> = {
            let mut q = tx
                .prepare_cached("SELECT cert FROM file_certs WHERE file = ?1")
                .map_err(e)?;
            q.query_map([id], |r| r.get(0))
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?
        };
        tx.execute("DELETE FROM file_certs WHERE file = ?1", [id])
            .map_err(e)?;
        tx.execute("DELETE FROM files WHERE id = ?1", [id])
            .map_err(e)?;
        for cert in certs {
            collect_garbage(&tx, cert).map_err(e)?;
        }
    }
    tx.commit().map_err(e)?;
    Ok(())
}

/// Read one new or changed file: record it, link its certificates (unlinking those of its
/// previous version) and note problems that do not depend on time or trust.
fn read_file(
    tx: &rusqlite::Connection,
    path: &Path,
    name: &str,
    size: i64,
    mtime: i64,
    now: i64,
    recheck: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let certs = match crate::store::read_certificates(path) {
        Ok(c) if c.is_empty() => {
            problems.push("no certificate in file".into());
            Vec::new()
        }
        Ok(c) => c,
        Err(reason) => {
            problems.push(reason);
            Vec::new()
        }
    };
    let file: i64 = tx
        .prepare_cached(
            "INSERT INTO files(name, size, mtime) VALUES(?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET size = excluded.size, mtime = excluded.mtime
             RETURNING id",
        )?
        .query_row(params![name, size, mtime], |r| r.get(0))?;
    let old: Vec<i64> = tx
        .prepare_cached("SELECT cert FROM file_certs WHERE file = ?1")?
        .query_map([file], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    tx.prepare_cached("DELETE FROM file_certs WHERE file = ?1")?
        .execute([file])?;
    for der in certs {
        let info = match validate::inspect(&der) {
            Ok(i) => i,
            Err(reason) => {
                problems.push(reason);
                continue;
            }
        };
        if !info.is_ca && info.emails.is_empty() {
            problems.push(format!(
                "certificate {}: {NO_RFC822_NAME}",
                info.fingerprint
            ));
            continue;
        }
        let (id, _) = upsert_cert(tx, &der, &info, now)?;
        tx.prepare_cached("INSERT OR IGNORE INTO file_certs(file, cert) VALUES(?1, ?2)")?
            .execute(params![file, id])?;
        if !info.is_ca {
            recheck.push(id);
        }
    }
    for id in old {
        collect_garbage(tx, id)?;
    }
    let problem = (!problems.is_empty()).then(|| problems.join("\n"));
    tx.prepare_cached("UPDATE files SET problem = ?2 WHERE id = ?1")?
        .execute(params![file, problem])?;
    Ok(())
}
