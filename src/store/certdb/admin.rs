//! What `cachet certs list|show|import|remove|approve` do to the store. Each works on the
//! database while the gateway runs (from another process); the gateway sees the change at its
//! next lookup. Import of a CA certificate is the exception: intermediates are read at load, so
//! it takes effect at the next reload.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};
use rustls_pki_types::CertificateDer;

use super::{decode_capabilities, decode_chain, fingerprint, secs, time, unhex, upsert_cert};
use crate::store::validate;
use crate::store::{Capability, CertStore, normalize_address};

/// One certificate as `cachet certs list` and `show` present it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub fingerprint: String,
    pub emails: Vec<String>,
    /// `file`, `imported`, `harvested`, joined by `+`.
    pub source: String,
    /// Files of the directory that hold it.
    pub files: Vec<String>,
    pub is_ca: bool,
    /// `anchored`, `approved`, `pending: reason` or `invalid: reason`, judged now.
    pub trust: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub capabilities: Vec<Capability>,
    pub signing_time: Option<SystemTime>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// CA certificates kept from the harvested message.
    pub chain: usize,
}

/// Which certificates `list` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this address.
    pub address: Option<String>,
    /// Only pending ones.
    pub pending: bool,
}

/// What importing one certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Added,
    AlreadyThere,
}

/// A short name for a capability OID (`cachet certs list`, `cachet explain`), else the OID.
pub fn capability_name(oid: &const_oid::ObjectIdentifier) -> String {
    let s = oid.to_string();
    let name = match s.as_str() {
        "2.16.840.1.101.3.4.1.2" => "aes128-cbc",
        "2.16.840.1.101.3.4.1.22" => "aes192-cbc",
        "2.16.840.1.101.3.4.1.42" => "aes256-cbc",
        "2.16.840.1.101.3.4.1.6" => "aes128-gcm",
        "2.16.840.1.101.3.4.1.26" => "aes192-gcm",
        "2.16.840.1.101.3.4.1.46" => "aes256-gcm",
        "1.2.840.113549.3.7" => "des-ede3-cbc",
        "1.2.840.113549.3.2" => "rc2-cbc",
        "1.2.840.113549.1.1.5" => "rsa-sha1",
        "1.2.840.113549.1.1.10" => "rsa-pss",
        "1.2.840.113549.1.1.11" => "rsa-sha256",
        "1.2.840.113549.1.1.12" => "rsa-sha384",
        "1.2.840.113549.1.1.13" => "rsa-sha512",
        "1.2.840.10045.4.3.2" => "ecdsa-sha256",
        "1.2.840.10045.4.3.3" => "ecdsa-sha384",
        "1.2.840.10045.4.3.4" => "ecdsa-sha512",
        "2.16.840.1.101.3.4.2.1" => "sha256",
        "2.16.840.1.101.3.4.2.2" => "sha384",
        "2.16.840.1.101.3.4.2.3" => "sha512",
        "1.3.14.3.2.26" => "sha1",
        "1.2.840.113549.1.1.1" => "rsa",
        "1.2.840.113549.1.1.7" => "rsa-oaep",
        "1.2.840.113549.1.9.16.3.18" => "chacha20-poly1305",
        "1.3.132.1.11.1" => "ecdh-sha256-kdf",
        "1.3.132.1.11.3" => "ecdh-sha512-kdf",
        "2.16.840.1.101.3.4.1.45" => "aes256-wrap",
        "2.16.840.1.101.3.4.1.5" => "aes128-wrap",
        "1.2.840.113549.1.9.15.1" => "prefer-signed-data",
        "1.2.840.113549.1.9.15.2" => "can-not-decrypt-any",
        "1.2.840.113549.1.9.15.3" => "sMIMECapabilitiesVersions",
        _ => return s,
    };
    name.to_string()
}

impl CertStore {
    /// Add one certificate as imported (an end-entity certificate is filed under its addresses;
    /// a CA certificate becomes an intermediate at the next load).
    pub fn import(&self, der: &CertificateDer<'_>, now: SystemTime) -> Result<Imported, String> {
        let Some(pool) = &self.db else {
            return Err("no certificate store configured".into());
        };
        let info = validate::inspect(der)?;
        if !info.is_ca && info.emails.is_empty() {
            return Err(format!(
                "certificate {}: {}",
                info.fingerprint,
                validate::NO_RFC822_NAME
            ));
        }
        let mut c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let (id, _) = upsert_cert(&tx, der, &info, secs(now)).map_err(e)?;
        let changed = tx
            .execute(
                "UPDATE certs SET imported = 1 WHERE id = ?1 AND imported = 0",
                [id],
            )
            .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(if changed > 0 {
            Imported::Added
        } else {
            Imported::AlreadyThere
        })
    }

    /// The fingerprint (full, or a unique prefix of at least 8 hex digits) of one stored
    /// certificate.
    fn resolve(&self, c: &rusqlite::Connection, fp: &str) -> Result<(i64, Vec<u8>), String> {
        let fp = fp.trim().to_ascii_lowercase().replace(':', "");
        if fp.len() < 8 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{fp:?} is not a certificate fingerprint (SHA-256 hex, at least 8 digits)"
            ));
        }
        // Every fingerprint starting with `fp` lies in [fp000..., fpfff...]: an odd last digit
        // is padded both ways, so the range holds exactly the matches.
        let pad = |d: &str| {
            if fp.len() % 2 == 1 {
                format!("{fp}{d}")
            } else {
                fp.clone()
            }
        };
        let low = unhex(&pad("0")).unwrap_or_default();
        let mut high = unhex(&pad("f")).unwrap_or_default();
        // The smallest blob greater than every blob starting with `high`.
        while let Some(last) = high.pop() {
            if last < 0xff {
                high.push(last + 1);
                break;
            }
        }
        let mut q = c
            .prepare(
                "SELECT id, fingerprint FROM certs WHERE fingerprint >= ?1
                 AND (?2 IS NULL OR fingerprint < ?2) ORDER BY fingerprint LIMIT 3",
            )
            .map_err(|e| e.to_string())?;
        let found: Vec<(i64, Vec<u8>)> = q
            .query_map(params![low, (!high.is_empty()).then_some(high)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|(_, f)| crate::store::hex(f).starts_with(&fp))
            .collect();
        match found.len() {
            0 => Err(format!("no certificate {fp} in the store")),
            1 => Ok(found.into_iter().next().unwrap_or_default()),
            _ => Err(format!(
                "{fp} is the start of more than one fingerprint: give more digits"
            )),
        }
    }

    /// The operator vouches for this one certificate: it is used without a path to a trust
    /// anchor (validity, key usage and revocation still apply).
    pub fn approve(&self, fp: &str) -> Result<String, String> {
        let pool = self.db.as_ref().ok_or("no certificate store configured")?;
        let c = pool.get()?;
        let (id, full) = self.resolve(&c, fp)?;
        c.execute(
            "UPDATE certs SET approved = 1, pending = 0, problem = NULL WHERE id = ?1",
            [id],
        )
        .map_err(|e| pool.error(e))?;
        Ok(crate::store::hex(&full))
    }

    /// Remove a certificate that came from an import or a harvest. One that a file of the
    /// directory holds is refused (the next sync would not bring it back while the file is
    /// unchanged, but the file says otherwise): delete the file instead.
    pub fn remove(&self, fp: &str) -> Result<String, String> {
        let pool = self.db.as_ref().ok_or("no certificate store configured")?;
        let mut c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let (id, full) = self.resolve(&tx, fp)?;
        let files: Vec<String> = {
            let mut q = tx
                .prepare(
                    "SELECT f.name FROM file_certs fc JOIN files f ON f.id = fc.file
                     WHERE fc.cert = ?1 ORDER BY f.name",
                )
                .map_err(e)?;
            q.query_map([id], |r| r.get(0))
                .map_err(e)?
                .flatten()
                .collect()
        };
        if !files.is_empty() {
            return Err(format!(
                "certificate {} comes from certificates.dir ({}): delete the file there and reload",
                crate::store::hex(&full),
                files.join(", ")
            ));
        }
        tx.execute("DELETE FROM addresses WHERE cert = ?1", [id])
            .map_err(e)?;
        tx.execute("DELETE FROM certs WHERE id = ?1", [id])
            .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(crate::store::hex(&full))
    }

    /// Call `each` with (address, certificate) for every certificate that `filter` selects, by
    /// address (the index order, no sort), then the CA certificates (address `-`); streamed, so
    /// a store of a million is never held at once.
    pub fn entries(
        &self,
        filter: &Filter,
        now: SystemTime,
        each: &mut dyn FnMut(&str, Entry),
    ) -> Result<(), String> {
        let Some(pool) = &self.db else { return Ok(()) };
        let c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let address = filter.address.as_deref().map(normalize_address);
        // Three shapes, each served by an index: one address (the primary key), the pending
        // ones (a partial index, then a small sort), everything (the primary key in order).
        let sql = match (&address, filter.pending) {
            (Some(_), _) => {
                "SELECT a.address, a.cert FROM addresses a JOIN certs c ON c.id = a.cert
                 WHERE a.address = ?1 AND (?2 = 0 OR c.pending = 1) ORDER BY a.cert"
            }
            (None, true) => {
                "SELECT a.address, a.cert FROM certs c JOIN addresses a ON a.cert = c.id
                 WHERE c.pending = 1 AND ?1 IS NULL AND ?2 = 1 ORDER BY a.address, a.cert"
            }
            (None, false) => {
                "SELECT a.address, a.cert FROM addresses a
                 WHERE ?1 IS NULL AND ?2 = 0 ORDER BY a.address, a.cert"
            }
        };
        let mut q = c.prepare(sql).map_err(e)?;
        let mut rows = q.query(params![address, filter.pending]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let addr: String = r.get(0).map_err(e)?;
            if let Some(entry) = self.entry(&c, r.get(1).map_err(e)?, now)? {
                each(&addr, entry);
            }
        }
        if address.is_none() && !filter.pending {
            let mut q = c
                .prepare("SELECT id FROM certs WHERE is_ca = 1 ORDER BY id")
                .map_err(e)?;
            let ids: Vec<i64> = q
                .query_map([], |r| r.get(0))
                .map_err(e)?
                .flatten()
                .collect();
            for id in ids {
                if let Some(entry) = self.entry(&c, id, now)? {
                    each("-", entry);
                }
            }
        }
        Ok(())
    }

    /// The certificates `query` names: a fingerprint (or unique prefix), or an address.
    pub fn show(&self, query: &str, now: SystemTime) -> Result<Vec<Entry>, String> {
        let pool = self.db.as_ref().ok_or("no certificate store configured")?;
        if query.contains('@') {
            let mut out = Vec::new();
            self.entries(
                &Filter {
                    address: Some(query.to_string()),
                    pending: false,
                },
                now,
                &mut |_, e| out.push(e),
            )?;
            return Ok(out);
        }
        let c = pool.get()?;
        let (id, _) = self.resolve(&c, query)?;
        Ok(self.entry(&c, id, now)?.into_iter().collect())
    }

    fn entry(
        &self,
        c: &rusqlite::Connection,
        id: i64,
        now: SystemTime,
    ) -> Result<Option<Entry>, String> {
        let e = |x: rusqlite::Error| x.to_string();
        type RowT = (
            Vec<u8>,
            bool,
            bool,
            bool,
            bool,
            bool,
            Option<Vec<u8>>,
            Option<String>,
            Option<i64>,
            i64,
            i64,
        );
        let row: Option<RowT> = c
            .prepare_cached(
                "SELECT der, is_ca, imported, harvested, pending, approved, chain, capabilities,
                 signing_time, first_seen, last_seen FROM certs WHERE id = ?1",
            )
            .map_err(e)?
            .query_row([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .optional()
            .map_err(e)?;
        let Some((
            der,
            is_ca,
            imported,
            harvested,
            pending,
            approved,
            chain,
            caps,
            st,
            first,
            last,
        )) = row
        else {
            return Ok(None);
        };
        let files: Vec<String> = c
            .prepare_cached(
                "SELECT f.name FROM file_certs fc JOIN files f ON f.id = fc.file
                 WHERE fc.cert = ?1 ORDER BY f.name",
            )
            .map_err(e)?
            .query_map([id], |r| r.get(0))
            .map_err(e)?
            .flatten()
            .collect();
        let mut sources = Vec::new();
        if !files.is_empty() {
            sources.push("file");
        }
        if imported {
            sources.push("imported");
        }
        if harvested {
            sources.push("harvested");
        }
        let der = CertificateDer::from(der);
        let chain = chain.as_deref().map(decode_chain).unwrap_or_default();
        let (emails, not_before, not_after, trust) = match validate::inspect(&der) {
            Ok(info) => {
                let trust = if is_ca {
                    "intermediate".to_string()
                } else {
                    match self.judge(&der, &info, &chain, approved, pending, now) {
                        Ok(_) if approved => "approved".into(),
                        Ok(_) => "anchored".into(),
                        Err(r) if pending && r.starts_with("pending: ") => r,
                        Err(r) => format!("invalid: {r}"),
                    }
                };
                (info.emails, info.not_before, info.not_after, trust)
            }
            Err(r) => (
                Vec::new(),
                SystemTime::UNIX_EPOCH,
                SystemTime::UNIX_EPOCH,
                format!("invalid: {r}"),
            ),
        };
        Ok(Some(Entry {
            fingerprint: crate::store::hex(&fingerprint(&der)),
            emails,
            source: sources.join("+"),
            files,
            is_ca,
            trust,
            not_before,
            not_after,
            capabilities: caps.as_deref().map(decode_capabilities).unwrap_or_default(),
            signing_time: st.map(time),
            first_seen: time(first),
            last_seen: time(last),
            chain: chain.len(),
        }))
    }
}

impl CertStore {
    /// The store as `cachet certs` opens it from another process: no directory sync, no
    /// re-validation; the intermediates are read so verdicts match the gateway's.
    pub fn attach(
        db: &std::path::Path,
        trust: &crate::store::TrustAnchors,
    ) -> Result<CertStore, String> {
        let pool = super::Pool::open(db)?;
        let mut store = CertStore::with_pool(pool, trust);
        store.reload_intermediates();
        Ok(store)
    }
}

fn day(t: SystemTime) -> String {
    let s = crate::date::rfc3339(t);
    s.get(..10).unwrap_or(&s).to_string()
}

/// The column header of [`list_line`].
pub const LIST_HEADER: &str =
    "address\tfingerprint\tsource\ttrust\texpires\tcapabilities\tlast seen";

/// One line of `cachet certs list`: tab-separated columns.
pub fn list_line(address: &str, e: &Entry) -> String {
    let caps: Vec<String> = e
        .capabilities
        .iter()
        .map(|c| capability_name(&c.oid))
        .collect();
    format!(
        "{address}\t{}\t{}\t{}\t{}\t{}\t{}",
        &e.fingerprint[..16.min(e.fingerprint.len())],
        e.source,
        e.trust,
        day(e.not_after),
        if caps.is_empty() {
            "-".to_string()
        } else {
            caps.join(",")
        },
        if e.source.contains("harvested") {
            crate::date::rfc3339(e.last_seen)
        } else {
            "-".into()
        }
    )
}

/// `cachet certs show`: everything about one certificate.
pub fn show_text(e: &Entry) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "fingerprint:  {}", e.fingerprint);
    let _ = writeln!(
        s,
        "addresses:    {}",
        if e.emails.is_empty() {
            "-".to_string()
        } else {
            e.emails.join(", ")
        }
    );
    let _ = writeln!(s, "source:       {}", e.source);
    if !e.files.is_empty() {
        let _ = writeln!(s, "files:        {}", e.files.join(", "));
    }
    let _ = writeln!(s, "trust:        {}", e.trust);
    let _ = writeln!(
        s,
        "valid:        {} to {}",
        crate::date::rfc3339(e.not_before),
        crate::date::rfc3339(e.not_after)
    );
    let caps: Vec<String> = e
        .capabilities
        .iter()
        .map(|c| capability_name(&c.oid))
        .collect();
    let _ = writeln!(
        s,
        "capabilities: {}",
        if caps.is_empty() {
            "-".to_string()
        } else {
            caps.join(", ")
        }
    );
    if let Some(t) = e.signing_time {
        let _ = writeln!(s, "signing time: {}", crate::date::rfc3339(t));
    }
    let _ = writeln!(s, "first seen:   {}", crate::date::rfc3339(e.first_seen));
    let _ = writeln!(s, "last seen:    {}", crate::date::rfc3339(e.last_seen));
    if e.chain > 0 {
        let _ = writeln!(
            s,
            "chain:        {} CA certificate(s) from the message",
            e.chain
        );
    }
    s
}

/// `cachet certs import FILE...`: every certificate of each file, one line each.
pub fn import_files(
    store: &CertStore,
    files: &[std::path::PathBuf],
    now: SystemTime,
) -> (String, bool) {
    use std::fmt::Write;
    let mut s = String::new();
    let mut ok = true;
    for f in files {
        let certs = match crate::store::read_certificates(f) {
            Ok(c) if c.is_empty() => Err("no certificate in file".to_string()),
            other => other,
        };
        let certs = match certs {
            Ok(c) => c,
            Err(e) => {
                ok = false;
                let _ = writeln!(s, "{}: {e}", f.display());
                continue;
            }
        };
        for der in certs {
            let fp = crate::store::hex(&fingerprint(&der));
            match store.import(&der, now) {
                Ok(what) => {
                    let verdict = store
                        .show(&fp, now)
                        .ok()
                        .and_then(|v| v.into_iter().next())
                        .map(|e| {
                            if e.is_ca {
                                "intermediate (used from the next reload)".to_string()
                            } else {
                                format!("{}: {}", e.emails.join(", "), e.trust)
                            }
                        })
                        .unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "{}: {fp} {} {verdict}",
                        f.display(),
                        match what {
                            Imported::Added => "imported;",
                            Imported::AlreadyThere => "already imported;",
                        }
                    );
                }
                Err(e) => {
                    ok = false;
                    let _ = writeln!(s, "{}: {fp}: {e}", f.display());
                }
            }
        }
    }
    (s, ok)
}
