//! The `file://` upstream (demo, tests): each copy becomes an `.eml` file, written durably.

/// `file://` upstream: `<dir>/<id>-<n>.eml`, written to a temp name, fsync'd and renamed, with
/// the envelope in `X-Cachet-Envelope-*` lines of a sidecar `.env` file.
pub(super) async fn write_outbox(
    dir: &std::path::Path,
    id: &str,
    sender: &str,
    rcpts: &[String],
    msg: &[u8],
) -> std::io::Result<String> {
    let dir = dir.to_path_buf();
    let id = id.to_string();
    let env = format!("from: {sender}\nto: {}\n", rcpts.join(", "));
    let msg = msg.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let mut n = 0;
        let name = loop {
            let name = format!("{id}-{n}.eml");
            if !dir.join(&name).exists() {
                break name;
            }
            n += 1;
        };
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&msg)?;
        f.sync_all()?;
        std::fs::write(dir.join(format!("{name}.env")), env)?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(name)
    })
    .await
    .map_err(std::io::Error::other)?
}
