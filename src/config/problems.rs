//! How problems are collected and reported ([`ConfigError`]: file, line, key, message;
//! [`Problems`] turns byte spans into line numbers), and the value checks every section shares:
//! paths (resolved from the config file's folder), addresses, networks, sender globs, bounds
//! from the parameter table.

use super::params;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Collects problems while validating, turning byte spans into line numbers.
pub struct Problems<'a> {
    file: &'a Path,
    source: &'a str,
    pub errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Problems {
            file,
            source,
            errors: Vec::new(),
        }
    }

    /// Records a problem at `span` (an empty span at 0 means "a default value": no line).
    pub fn at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let line = (span != (0..0)).then(|| line_of(self.source, span.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

pub(super) fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A path that must name an existing file.
pub(super) fn existing_file(
    base: &Path,
    v: &Spanned<PathBuf>,
    key: &str,
    p: &mut Problems,
) -> PathBuf {
    existing(base, v, key, p, "file", Path::is_file)
}

/// A path that must name an existing directory.
pub(super) fn existing_dir(
    base: &Path,
    v: &Spanned<PathBuf>,
    key: &str,
    p: &mut Problems,
) -> PathBuf {
    existing(base, v, key, p, "directory", Path::is_dir)
}

/// `v` resolved from the config file's folder; a problem when it is not an existing `what`.
fn existing(
    base: &Path,
    v: &Spanned<PathBuf>,
    key: &str,
    p: &mut Problems,
    what: &str,
    is: fn(&Path) -> bool,
) -> PathBuf {
    let path = resolve(base, v.get_ref());
    if !is(&path) {
        p.at(
            v.span(),
            key,
            format!("{what} {} does not exist", path.display()),
        );
    }
    path
}

/// Reports `value` out of the parameter table's bounds for `key`.
pub(super) fn bounded(p: &mut Problems, key: &str, value: u64) {
    if let Err(message) = params::check(key, value) {
        p.at(0..0, key, message);
    }
}

pub(super) fn socket_addrs(
    list: &[Spanned<String>],
    key: &str,
    p: &mut Problems,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in list {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => p.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address:port such as \"0.0.0.0:2525\" or \"[::]:25\"",
                    v.get_ref()
                ),
            ),
        }
    }
    out
}

pub(super) fn networks(list: &[Spanned<String>], key: &str, p: &mut Problems) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for v in list {
        let text = v.get_ref();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => out.push(n),
            Err(_) => p.at(
                v.span(),
                key,
                format!("{text:?} is not a network such as \"10.0.0.0/8\""),
            ),
        }
    }
    out
}

/// Sender address globs (`[[submitter]]` and `[[inbound.rule]]` `senders`), normalised as
/// lookups compare them: exactly one `@`, no spaces; `example` is the glob the message suggests.
pub(super) fn sender_globs(
    list: &[Spanned<String>],
    key: &str,
    example: &str,
    p: &mut Problems,
) -> Vec<(String, wildmatch::WildMatch)> {
    let mut out = Vec::new();
    for v in list {
        let g = crate::store::normalize_glob(v.get_ref());
        if g.is_empty() || g.contains(char::is_whitespace) || g.matches('@').count() != 1 {
            p.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address glob such as \"{example}\"",
                    v.get_ref()
                ),
            );
            continue;
        }
        out.push((g.clone(), wildmatch::WildMatch::new(&g)));
    }
    out
}
