//! `[log]`: log format and level, and the audit trail's file.

use super::problems::{Problems, resolve};
use super::raw::RawLog;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub audit_file: Option<PathBuf>,
}

pub(super) fn log(l: RawLog, base: &Path, p: &mut Problems) -> LogConfig {
    let format = match l.format.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            p.at(
                span,
                "log.format",
                format!("{other:?} is not one of text, json"),
            );
            LogFormat::Text
        }
    };
    LogConfig {
        format,
        level: l.level.unwrap_or_else(|| "info".into()),
        audit_file: l.audit_file.map(|f| resolve(base, &f)),
    }
}
