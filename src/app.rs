//! Wiring: builds each stage from the loaded [`Runtime`], binds the sockets, spawns the listener,
//! scheduler and admin tasks (the outbound listeners and the `[inbound]` ones), and owns the process's life: SIGHUP reloads (validate everything,
//! swap atomically, or keep the old runtime and log why), SIGTERM/SIGINT stop gracefully (stop
//! accepting, let sessions and deliveries finish, bounded; the spool is consistent at every step).

use crate::admin::Admin;
use crate::config::ConfigError;
use crate::listener;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::session::SessionCtx;
use crate::spool::{Direction, Spool};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

/// How long sessions and deliveries in flight get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(20);

/// Formats a list of config problems, one per line.
pub fn format_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn serve(config_path: PathBuf) -> Result<(), String> {
    let rt = Runtime::load(&config_path).map_err(|e| format_errors(&e))?;
    let spool = Spool::open(&rt.config.spool.dir)
        .map_err(|e| format!("spool {}: {e}", rt.config.spool.dir.display()))?;
    let cfg = rt.config.clone();
    let runtime = Arc::new(ArcSwap::from_pointee(rt));
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (queued_tx, queued_rx) = mpsc::unbounded_channel();

    let ctx = Arc::new(SessionCtx {
        runtime: runtime.clone(),
        spool: spool.clone(),
        queued: queued_tx,
        shutdown: shutdown_rx.clone(),
        metrics: metrics.clone(),
    });
    // Each direction has its own `server.max_connections` slots: a flood of submissions cannot
    // lock the organisation's MTA out, nor the other way round.
    let limit = Arc::new(Semaphore::new(cfg.server.max_connections));
    let inbound_limit = Arc::new(Semaphore::new(cfg.server.max_connections));
    let inbound_listen = cfg
        .inbound
        .as_ref()
        .map(|i| i.listen.clone())
        .unwrap_or_default();
    let mut listeners = Vec::new();
    for (addrs, implicit, direction, limit) in [
        (&cfg.server.listen, false, Direction::Outbound, &limit),
        (&cfg.server.listen_tls, true, Direction::Outbound, &limit),
        (&inbound_listen, false, Direction::Inbound, &inbound_limit),
    ] {
        for addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), implicit_tls = implicit, direction = direction.name(), "listening for SMTP");
            listeners.push(tokio::spawn(listener::serve(
                l,
                ctx.clone(),
                limit.clone(),
                implicit,
                direction,
            )));
        }
    }
    let listening = Arc::new(AtomicBool::new(true));
    if let Some(addr) = cfg.admin_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        tracing::info!(%addr, "admin listener (/metrics, /healthz)");
        let rt_for_gauges = runtime.clone();
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            spool: spool.clone(),
            listening: listening.clone(),
            extra: Arc::new(move || {
                let stores = &rt_for_gauges.load().stores;
                let mut s = crate::check::expiry_gauges(stores);
                s.push_str(
                    &stores
                        .revocation
                        .render_metrics(std::time::SystemTime::now()),
                );
                s
            }),
        });
        tokio::spawn(admin.serve(l, shutdown_rx.clone()));
    }
    let scheduler = Scheduler {
        spool: spool.clone(),
        runtime: runtime.clone(),
        metrics: metrics.clone(),
    };
    let sched = tokio::spawn(scheduler.run(queued_rx, shutdown_rx.clone(), DRAIN));
    tokio::spawn(revocation_task(runtime.clone(), shutdown_rx.clone()));
    tracing::info!(config = %config_path.display(), policy = %cfg.policy.version, upstream = %cfg.upstream.url, inbound_upstream = cfg.inbound.as_ref().map(|i| i.upstream.url.as_str()).unwrap_or("-"), "cachet started");

    signals(&config_path, &runtime).await;

    tracing::info!("shutting down: no new connections; finishing sessions and deliveries");
    listening.store(false, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    for l in listeners {
        let _ = l.await;
    }
    let permits = cfg.server.max_connections as u32;
    let _ = tokio::time::timeout(DRAIN, async {
        let _ = limit.acquire_many(permits).await;
        let _ = inbound_limit.acquire_many(permits).await;
    })
    .await;
    let _ = sched.await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM/SIGINT; handles SIGHUP reloads meanwhile.
async fn signals(config_path: &Path, runtime: &Arc<ArcSwap<Runtime>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    loop {
        tokio::select! {
            _ = hup.recv() => reload(config_path, runtime).await,
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// Validates the new configuration completely before swapping it in; on any problem the old
/// runtime keeps running. Listen addresses and the spool dir need a restart to change.
pub async fn reload(config_path: &Path, runtime: &Arc<ArcSwap<Runtime>>) {
    let path = config_path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Runtime::load(&path)).await;
    match loaded {
        Ok(Ok(mut new)) => {
            let old = runtime.load();
            let inbound_listen =
                |rt: &Runtime| rt.config.inbound.as_ref().map(|i| i.listen.clone());
            if new.config.server.listen != old.config.server.listen
                || new.config.server.listen_tls != old.config.server.listen_tls
                || inbound_listen(&new) != inbound_listen(&old)
                || new.config.spool.dir != old.config.spool.dir
            {
                tracing::warn!(
                    "listen addresses and spool.dir changes take effect after a restart"
                );
            }
            let version = new.config.policy.version.clone();
            // Directory answers survive a reload for directories configured the same way.
            new.stores.directory.adopt_cache(&old.stores.directory);
            // CRLs and OCSP answers outlive the reload; crl_dir is re-read by the refresher,
            // woken to look at the new certificates once the new runtime is in.
            let revocation = old.stores.revocation.clone();
            new.stores.revocation = revocation.clone();
            runtime.store(Arc::new(new));
            // After the swap, so the refresher wakes to the new certificates.
            revocation.wake.notify_one();
            // Logged after the swap: whoever reads this line may rely on the new runtime.
            tracing::info!(policy = %version, "configuration reloaded");
        }
        Ok(Err(errors)) => {
            for e in &errors {
                tracing::error!(problem = %e, "reload refused; still running the previous configuration");
            }
        }
        Err(e) => tracing::error!(error = %e, "reload failed"),
    }
}

/// The background revocation refresher: every `certificates.revocation_interval` (or at once
/// after a reload) it fetches the CRLs and OCSP answers that are due for the certificates of
/// the current runtime ([`crate::store::revocation::refresh`]). Idle when no policy checks
/// revocation. The hot path only ever reads what it left in memory.
/// How revocation status is refreshed for this runtime; `None` when nothing checks it.
pub fn revocation_settings(rt: &Runtime) -> Option<crate::store::revocation::refresh::Settings> {
    let c = rt.config.certificates.as_ref()?;
    rt.config
        .policy
        .revocation_in_use()
        .then(|| crate::store::revocation::refresh::Settings {
            cache_dir: rt.config.spool.dir.join("revocation"),
            crl_dir: c.crl_dir.clone(),
            limits: crate::http::Limits {
                timeout: c.fetch_timeout,
                max_size: c.crl_max_size,
            },
            interval: c.revocation_interval,
        })
}

async fn revocation_task(runtime: Arc<ArcSwap<Runtime>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let rt = runtime.load_full();
        let rev = rt.stores.revocation.clone();
        let mut interval = Duration::from_secs(300);
        if let Some(c) = &rt.config.certificates {
            interval = c.revocation_interval;
            if let Some(settings) = revocation_settings(&rt) {
                let targets = rt.stores.revocation_targets();
                drop(rt);
                tokio::select! {
                    _ = crate::store::revocation::refresh::round(&rev, &settings, targets) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = rev.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
