//! The scheduler (Postfix's qmgr): decides what is delivered next. It owns an in-memory timetable
//! of queue IDs rebuilt from the spool at start ("recovery is scanning the directories"), takes
//! new IDs from sessions, picks up messages an operator released (a periodic scan of incoming/),
//! and runs up to `spool.workers` deliveries at once within a memory budget.
//!
//! Both directions share this timetable; the envelope's `direction` picks the path inside one
//! attempt:
//! - `attempt.rs`: one delivery attempt (lock, load, reserve its share of the memory budget,
//!   read) and the outbound direction (seal, relay to `[upstream]`, record each recipient's
//!   outcome);
//! - `inbound.rs`: the inbound direction (`pipeline::inbound::process`, learn signers, relay to
//!   `inbound.upstream`);
//! - `reschedule.rs`: what follows every attempt (expire, DSN, defer, hold or remove), when to
//!   try again ([`Due`]), and the outcomes kept in memory when an envelope cannot be rewritten.
//!
//! The files import downwards only: `mod.rs` -> `attempt.rs` -> `inbound.rs`, `reschedule.rs`.
//!
//! An ID is never scheduled while it is in flight, and the periodic pickup of incoming/ leaves
//! alone what the timetable already has from incoming/.

mod attempt;
mod inbound;
mod reschedule;

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::spool::{Queue, Spool};
use arc_swap::ArcSwap;
use attempt::{MEMORY_BUDGET_MIB, attempt};
use reschedule::{Due, Unsaved, now_ms};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

/// How often incoming/ is scanned for messages released or retried by the queue CLI.
const PICKUP_INTERVAL: Duration = Duration::from_secs(1);

pub struct Scheduler {
    pub spool: Spool,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
}

/// The timetable: when each queued ID is due and from which queue. The heap orders the due
/// times; `scheduled` holds the latest one per ID, so heap entries that disagree are stale
/// (rescheduled meanwhile) and skipped.
#[derive(Default)]
struct Timetable {
    heap: BinaryHeap<Reverse<(u64, String, Queue)>>,
    scheduled: HashMap<String, (u64, Queue)>,
}

impl Timetable {
    /// Schedules `id` at `at_ms` from `queue`, replacing any earlier time.
    fn insert(&mut self, at_ms: u64, id: String, queue: Queue) {
        self.scheduled.insert(id.clone(), (at_ms, queue));
        self.heap.push(Reverse((at_ms, id, queue)));
    }

    /// The next current entry due by `now` that is not in flight (it stays scheduled until
    /// [`Timetable::start`] or [`Timetable::put_back`]).
    fn next_due(&mut self, now: u64, in_flight: &HashSet<String>) -> Option<(u64, String, Queue)> {
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > now {
                return None;
            }
            let Reverse((at, id, queue)) = self.heap.pop().expect("peeked");
            if in_flight.contains(&id) || self.scheduled.get(&id).map(|s| s.0) != Some(at) {
                continue; // stale entry: rescheduled meanwhile, or being delivered
            }
            return Some((at, id, queue));
        }
        None
    }

    /// A due entry that found no free worker: due again at once when one frees up.
    fn put_back(&mut self, at_ms: u64, id: String, queue: Queue) {
        self.heap.push(Reverse((at_ms, id, queue)));
    }

    /// A due entry handed to a worker: no longer scheduled.
    fn start(&mut self, id: &str) {
        self.scheduled.remove(id);
    }

    /// How long to sleep: until the next due time, at most [`PICKUP_INTERVAL`].
    fn wait(&self, now: u64) -> Duration {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(PICKUP_INTERVAL)
            .min(PICKUP_INTERVAL)
    }

    /// Whether `id` is scheduled from incoming/.
    fn has_from_incoming(&self, id: &str) -> bool {
        matches!(self.scheduled.get(id), Some((_, Queue::Incoming)))
    }
}

impl Scheduler {
    /// Runs until `shutdown` flips, then waits for deliveries in flight (bounded by `drain`).
    pub async fn run(
        self,
        mut queued: mpsc::UnboundedReceiver<String>,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let workers = self.runtime.load().config.spool.workers;
        let slots = Arc::new(Semaphore::new(workers));
        let memory = Arc::new(Semaphore::new(MEMORY_BUDGET_MIB as usize));
        let mut timetable = Timetable::default();
        let unsaved = Arc::new(Unsaved::default());
        let mut in_flight: HashSet<String> = HashSet::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<Due>)>();

        self.recover(&mut timetable);
        let mut last_pickup = Instant::now();
        loop {
            // Start everything that is due, as long as a worker slot is free.
            let now = now_ms();
            while let Some((at, id, queue)) = timetable.next_due(now, &in_flight) {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    timetable.put_back(at, id, queue);
                    break;
                };
                timetable.start(&id);
                if queue == Queue::Incoming {
                    self.spool.in_flow().started();
                }
                in_flight.insert(id.clone());
                let spool = self.spool.clone();
                let rt = self.runtime.load_full();
                let metrics = self.metrics.clone();
                let done = done_tx.clone();
                let memory = memory.clone();
                let unsaved = unsaved.clone();
                tokio::spawn(async move {
                    let next = attempt(&spool, &rt, &metrics, &memory, &unsaved, &id, queue).await;
                    drop(permit);
                    let _ = done.send((id, next));
                });
            }
            let wait = timetable.wait(now);
            tokio::select! {
                Some(id) = queued.recv() => timetable.insert(0, id, Queue::Incoming),
                Some((id, next)) = done_rx.recv() => {
                    in_flight.remove(&id);
                    if let Some(d) = next {
                        timetable.insert(d.at_ms, d.id, d.queue);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
            if last_pickup.elapsed() >= PICKUP_INTERVAL {
                last_pickup = Instant::now();
                self.pickup(&mut timetable, &in_flight).await;
            }
        }
        // Let deliveries in flight finish so their envelopes are up to date (bounded).
        let _ = tokio::time::timeout(drain, slots.acquire_many(workers as u32)).await;
    }

    /// Recovery: the start-up scan of incoming/ and deferred/ fills the timetable (there is no
    /// other recovery path). What cannot be read just now is tried after the first retry
    /// interval; the attempt reads it again (and judges it).
    fn recover(&self, timetable: &mut Timetable) {
        match self.spool.scan(&[Queue::Incoming, Queue::Deferred]) {
            Ok(scanned) => {
                if !scanned.found.is_empty() {
                    tracing::info!(
                        messages = scanned.found.len(),
                        "recovered queued messages from the spool"
                    );
                }
                for (q, env) in scanned.found {
                    timetable.insert(env.next_attempt.saturating_mul(1000), env.id, q);
                }
                let later = now_ms() + self.runtime.load().config.spool.retry[0].as_millis() as u64;
                for (q, id) in scanned.unread {
                    timetable.insert(later, id, q);
                }
            }
            Err(e) => tracing::error!(error = %e, "spool scan failed"),
        }
    }

    /// The periodic pickup of incoming/: messages released or retried by an operator (or
    /// injected by another process), new to the timetable or known from another queue. What
    /// the timetable has from incoming/ keeps its time (a failed rewrite leaves an envelope
    /// there that must wait for its retry), and what is in flight is never scheduled twice.
    async fn pickup(&self, timetable: &mut Timetable, in_flight: &HashSet<String>) {
        // A directory listing can be large: never on the async threads.
        let spool = self.spool.clone();
        let listed = tokio::task::spawn_blocking(move || spool.ids(Queue::Incoming)).await;
        if let Ok(Ok(ids)) = listed {
            for id in ids {
                if !in_flight.contains(&id) && !timetable.has_from_incoming(&id) {
                    timetable.insert(0, id, Queue::Incoming);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timetable_skips_stale_and_in_flight_entries() {
        let mut t = Timetable::default();
        t.insert(5, "a".into(), Queue::Incoming);
        t.insert(10, "a".into(), Queue::Deferred); // rescheduled: the entry at 5 is stale
        t.insert(7, "b".into(), Queue::Incoming);
        let none = HashSet::new();
        assert_eq!(t.next_due(4, &none), None);
        assert_eq!(t.next_due(8, &none), Some((7, "b".into(), Queue::Incoming)));
        t.put_back(7, "b".into(), Queue::Incoming); // no free worker
        let b_in_flight: HashSet<String> = ["b".to_string()].into();
        assert_eq!(
            t.next_due(10, &b_in_flight),
            Some((10, "a".into(), Queue::Deferred))
        );
        t.start("a");
        assert!(!t.has_from_incoming("a"));
        // b's entry was skipped while b was in flight; its finished attempt schedules it anew.
        assert!(t.has_from_incoming("b"));
        assert_eq!(t.next_due(u64::MAX, &none), None);
        assert_eq!(t.wait(0), PICKUP_INTERVAL);
        t.insert(3, "c".into(), Queue::Incoming);
        assert_eq!(t.wait(1), Duration::from_millis(2));
    }
}
