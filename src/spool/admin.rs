//! Operator actions on a spool, safe beside a live gateway (`cachet queue ...`, like
//! postqueue/postsuper). Every change appends an envelope record (and renames the queue file
//! between queues), so the gateway sees either the old or the new state, and every change is made under the message lock (see the
//! spool header): an action on a message being delivered waits for the attempt to end, then
//! applies to the envelope that attempt wrote, so recipients already served stay served and a
//! hold is never overwritten by the delivery.

use super::{MessageLock, Queue, RcptStatus, Spool};
use std::fmt::Write;
use std::time::Duration;

/// How long an action waits for a delivery attempt in flight. An attempt is bounded by the
/// upstream timeouts per command, so this only runs out with a very slow upstream.
const LOCK_PATIENCE: Duration = Duration::from_secs(300);

pub fn list(spool: &Spool) -> Result<String, String> {
    let mut out = String::new();
    let now = super::now_secs();
    let mut total = 0;
    for q in Queue::ALL {
        for id in spool.ids(q).map_err(|e| e.to_string())? {
            total += 1;
            match spool.load(q, &id) {
                Ok(Some(env)) => {
                    let age = now.saturating_sub(env.received);
                    let sender = if env.sender.is_empty() {
                        "<>"
                    } else {
                        env.sender.as_str()
                    };
                    let _ = writeln!(
                        out,
                        "{id}  {:<8}  {:>8}  {:>6}s  {:<8}  {sender}",
                        q.dir_name(),
                        env.size,
                        age,
                        env.direction.name()
                    );
                    for r in &env.recipients {
                        let _ = writeln!(
                            out,
                            "      {:?} {}{}{}",
                            r.status,
                            r.address,
                            r.reply
                                .as_ref()
                                .map(|x| format!("  ({x})"))
                                .unwrap_or_default(),
                            r.reason
                                .as_ref()
                                .map(|x| format!("  [{x}]"))
                                .unwrap_or_default()
                        );
                    }
                }
                _ => {
                    let _ = writeln!(out, "{id}  {:<8}  (unreadable)", q.dir_name());
                }
            }
        }
    }
    let _ = writeln!(out, "-- {total} message(s)");
    Ok(out)
}

fn find(spool: &Spool, id: &str) -> Result<(Queue, super::Envelope), String> {
    spool
        .find(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no message {id} in incoming, deferred or hold"))
}

/// The message lock, then the envelope as it is under the lock. `None` for the lock when the
/// queue file went meanwhile (delivered, or moved to corrupt/: nothing delivers it then).
fn locked(
    spool: &Spool,
    id: &str,
) -> Result<(Option<MessageLock>, Queue, super::Envelope), String> {
    find(spool, id)?;
    let lock = spool
        .lock_waiting(id, LOCK_PATIENCE)
        .map_err(|e| e.to_string())?;
    let (q, env) = find(spool, id)?;
    Ok((lock, q, env))
}

pub fn show(spool: &Spool, id: &str) -> Result<String, String> {
    let (q, env) = find(spool, id)?;
    let data = spool.read_data(q, id).map_err(|e| e.to_string())?;
    Ok(format!(
        "queue: {}\n{}\n--- headers ---\n{}",
        q.dir_name(),
        serde_json::to_string_pretty(&env).unwrap_or_default(),
        String::from_utf8_lossy(crate::message::head(&data))
    ))
}

pub fn hold(spool: &Spool, id: &str) -> Result<String, String> {
    let (_lock, q, mut env) = locked(spool, id)?;
    if q == Queue::Hold {
        return Ok(format!("{id} is already on hold"));
    }
    env.hold_reason = Some("held by operator".into());
    env.seq += 1;
    spool
        .save_blocking(&env, Queue::Hold, q)
        .map_err(|e| e.to_string())?;
    Ok(format!("{id} held"))
}

/// Back to incoming/: held recipients become pending again; the gateway picks it up within a second.
/// The envelope remembers the release, so inbound rules do not hold the message again.
pub fn release(spool: &Spool, id: &str) -> Result<String, String> {
    let (_lock, q, mut env) = locked(spool, id)?;
    if q != Queue::Hold {
        return Err(format!("{id} is not on hold (it is in {})", q.dir_name()));
    }
    for r in env
        .recipients
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Held)
    {
        r.status = RcptStatus::Pending;
    }
    env.hold_reason = None;
    // The operator decided: inbound rules must not hold it again (see `Envelope::released`).
    env.released = true;
    env.next_attempt = 0;
    env.seq += 1;
    spool
        .save_blocking(&env, Queue::Incoming, q)
        .map_err(|e| e.to_string())?;
    Ok(format!("{id} released"))
}

/// Deferred -> incoming now, without waiting for the retry timer.
pub fn retry(spool: &Spool, id: &str) -> Result<String, String> {
    let (_lock, q, mut env) = locked(spool, id)?;
    if q == Queue::Hold {
        return Err(format!("{id} is on hold: use release"));
    }
    env.next_attempt = 0;
    env.seq += 1;
    spool
        .save_blocking(&env, Queue::Incoming, q)
        .map_err(|e| e.to_string())?;
    Ok(format!("{id} scheduled for immediate delivery"))
}

pub fn delete(spool: &Spool, id: &str) -> Result<String, String> {
    let (_lock, q, _) = locked(spool, id)?;
    spool.remove_blocking(q, id).map_err(|e| e.to_string())?;
    Ok(format!("{id} deleted"))
}
