//! The one HTTP client: CRL downloads and OCSP exchanges (RFC 5280 §4.2.1.13, RFC 6960 App. A).
//!
//! `ureq` (blocking, so callers run it on the blocking pool); `https://` goes through rustls on
//! aws-lc-rs, the project's one provider, with the system roots. Limits on every request:
//! - connect at most [`CONNECT_TIMEOUT`] (or the total, if shorter), the whole exchange at most
//!   `timeout` (redirects included);
//! - a body larger than `max_size` is refused; downloads stream into `<dest>.part` and are
//!   fsynced and renamed onto `dest` only when complete, so a reader never sees half a CRL;
//! - redirects (GET only) stay in their scheme (`http` -> `http`), at most [`MAX_REDIRECTS`].
//!
//! Concurrency limits and one-fetch-per-URL are the caller's ([`crate::store::revocation`]).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed for one GET.
pub const MAX_REDIRECTS: usize = 3;

/// Per-request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole exchange, connect included.
    pub timeout: Duration,
    /// Largest body accepted, bytes.
    pub max_size: u64,
}

/// System roots for `https://` distribution points, loaded once.
fn roots() -> Arc<Vec<ureq::tls::Certificate<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<ureq::tls::Certificate<'static>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            Arc::new(
                found
                    .certs
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect(),
            )
        })
        .clone()
}

fn agent(remaining: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(roots()))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(remaining))
        .timeout_connect(Some(remaining.min(CONNECT_TIMEOUT)))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("cachet/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn scheme(url: &str) -> Result<&'static str, String> {
    if url.starts_with("http://") {
        Ok("http")
    } else if url.starts_with("https://") {
        Ok("https")
    } else {
        Err(format!("{url}: only http:// and https:// URLs are fetched"))
    }
}

/// The absolute URL a `Location` header points to, if it stays in `from`'s scheme.
fn redirect_target(from: &str, location: &str) -> Result<String, String> {
    let target = if location.starts_with('/') {
        let s = scheme(from)?;
        let rest = &from[s.len() + 3..];
        let host = rest.split('/').next().unwrap_or(rest);
        format!("{s}://{host}{location}")
    } else {
        location.to_string()
    };
    if scheme(&target)? != scheme(from)? {
        return Err(format!(
            "{from}: redirect to {target} changes the scheme; refused"
        ));
    }
    Ok(target)
}

fn remaining(deadline: Instant, url: &str) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{url}: timed out"))
}

/// GET `url` into `dest` (atomically: `<dest>.part`, fsync, rename). Returns the size.
pub fn get_to_file(url: &str, dest: &Path, limits: Limits) -> Result<u64, String> {
    let deadline = Instant::now() + limits.timeout;
    let mut current = url.to_string();
    scheme(&current)?;
    for _ in 0..=MAX_REDIRECTS {
        let rem = remaining(deadline, url)?;
        let resp = agent(rem)
            .get(&current)
            .call()
            .map_err(|e| format!("{current}: {e}"))?;
        let status = resp.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("{current}: redirect without Location"))?;
            current = redirect_target(&current, location)?;
            continue;
        }
        if status != 200 {
            return Err(format!("{current}: HTTP {status}"));
        }
        if resp
            .body()
            .content_length()
            .is_some_and(|n| n > limits.max_size)
        {
            return Err(format!(
                "{current}: larger than {} bytes; refused",
                limits.max_size
            ));
        }
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(limits.max_size + 1)
            .reader();
        return stream_to(reader, dest, limits.max_size, &current);
    }
    Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
}

fn stream_to(mut reader: impl Read, dest: &Path, max: u64, url: &str) -> Result<u64, String> {
    let part = dest.with_extension("part");
    let io = |e: std::io::Error| format!("{}: {e}", part.display());
    let mut file = std::fs::File::create(&part).map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(total),
            Ok(n) => n,
            Err(e) => break Err(format!("{url}: {e}")),
        };
        total += n as u64;
        if total > max {
            break Err(format!("{url}: larger than {max} bytes; refused"));
        }
        if let Err(e) = file.write_all(&buf[..n]) {
            break Err(io(e));
        }
    };
    let result = result.and_then(|n| {
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&part, dest).map_err(io)?;
        if let Some(dir) = dest.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(n)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// POST `body` as `content_type` to `url`; the response body (at most `max_size` bytes).
/// No redirects: an OCSP responder answers where it is asked.
pub fn post(url: &str, content_type: &str, body: &[u8], limits: Limits) -> Result<Vec<u8>, String> {
    scheme(url)?;
    let resp = agent(limits.timeout)
        .post(url)
        .header("content-type", content_type)
        .send(body)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    let mut out = Vec::new();
    resp.into_body()
        .into_with_config()
        .limit(limits.max_size + 1)
        .reader()
        .read_to_end(&mut out)
        .map_err(|e| format!("{url}: {e}"))?;
    if out.len() as u64 > limits.max_size {
        return Err(format!(
            "{url}: larger than {} bytes; refused",
            limits.max_size
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::redirect_target;

    #[test]
    fn redirects_stay_in_their_scheme() {
        assert_eq!(
            redirect_target("http://a.example/x.crl", "/y.crl").unwrap(),
            "http://a.example/y.crl"
        );
        assert_eq!(
            redirect_target("http://a.example/x.crl", "http://b.example/y.crl").unwrap(),
            "http://b.example/y.crl"
        );
        assert!(redirect_target("http://a.example/x.crl", "https://b.example/y.crl").is_err());
        assert!(redirect_target("http://a.example/x.crl", "file:///etc/passwd").is_err());
        assert!(redirect_target("http://a.example/x.crl", "ldap://b.example/").is_err());
    }
}
