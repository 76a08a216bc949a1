//! The `cachet` command line. Only argument handling lives here; everything else is the library.

use cachet::{app, config, demo, runtime::Runtime, spool};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: with hundreds of sessions and the blocking pool's threads,
/// glibc's per-thread arenas kept freed message buffers and peak RSS for 200 x 10 MB messages
/// reached 1.5 GB (405 MB with MALLOC_ARENA_MAX=2); see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v3 numbering, mimalloc.h `mi_option_e`; the bindings
/// of libmimalloc-sys 0.1 lack it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the kernel at once and keeps transparent huge pages off. A heap
/// profile of 200 concurrent 10 MB messages (docs/performance.md, "Peak RSS: the heap
/// profile") found ~105 MB live at the peak but 190-207 MB resident: mimalloc 3 keeps freed
/// memory committed for 1 s (`purge_delay`), while the next message's 10-20 MB buffers take
/// fresh pages, and with THP every touched 2 MiB of an arena becomes resident at once.
/// Both off: 117 MB. An operator's `MIMALLOC_PURGE_DELAY` still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator; mimalloc reads it at each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    // The `no_thp` feature stops mimalloc asking for huge pages; with the system setting at
    // `always` the kernel would still use them, so THP is off for this process (inherited by
    // nothing else: cachet starts no programs). Failure (an old kernel) only costs memory.
    // SAFETY: prctl with integer arguments only.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[derive(Parser)]
#[command(
    name = "cachet",
    version,
    about = "S/MIME signing and encryption SMTP gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = "config/cachet.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and everything it refers to; exit 0, or list every problem.
    Check {
        #[arg(long, short, default_value = "config/cachet.toml")]
        config: PathBuf,
    },
    /// Run a self-contained demo: throwaway PKI and config in DIR, listening on 127.0.0.1:2525,
    /// delivering to DIR/outbox.
    Demo {
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: String,
        /// Where /metrics and /healthz listen.
        #[arg(long, default_value = "127.0.0.1:9925")]
        admin: String,
    },
    /// Show what the policy does with a message: per recipient, the rule, the signing key,
    /// the certificate and algorithms, or the exact reply a refused recipient gets.
    Explain {
        #[arg(long, short, default_value = "config/cachet.toml")]
        config: PathBuf,
        /// Envelope sender (MAIL FROM).
        #[arg(long)]
        from: String,
        /// Recipients (RCPT TO); repeat for several.
        #[arg(long, required = true)]
        to: Vec<String>,
        /// The From: header address, when it differs from the envelope sender.
        #[arg(long)]
        header_from: Option<String>,
        /// A Subject: to try the subject-tag trigger with.
        #[arg(long)]
        subject: Option<String>,
        /// The submitting client's IP address: shows which [[submitter]] it is and what it may send as.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// The AUTH user the client logged in as.
        #[arg(long)]
        user: Option<String>,
        /// SHA-256 fingerprint of the TLS client certificate it presents.
        #[arg(long)]
        tls_fingerprint: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running gateway's admin listener for /healthz; exit 0 when healthy (container
    /// HEALTHCHECK without curl or wget).
    Healthcheck {
        #[arg(long, default_value = "127.0.0.1:9925")]
        admin: String,
    },
    /// Print configuration parameters: every default (`--defaults`, like `postconf -d`) or what
    /// the file changes (`--changed`, like `postconf -n`).
    Config {
        #[arg(long, short, default_value = "config/cachet.toml")]
        config: PathBuf,
        /// Every key with its built-in default.
        #[arg(long, conflicts_with = "changed")]
        defaults: bool,
        /// Only the keys the file sets to something other than the default.
        #[arg(long)]
        changed: bool,
    },
    /// Print a `server.auth_users` line for USER; the password is read from standard input.
    Passwd { user: String },
    /// Recipient certificates: what each source (files, directories) holds for an address.
    Certs {
        #[arg(long, short, global = true, default_value = "config/cachet.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Signing keys: list them (address, algorithm, where the key lives, expiry) or import one.
    Keys {
        #[arg(long, short, global = true, default_value = "config/cachet.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Inspect and manage the queue of a (running or stopped) gateway.
    Queue {
        #[arg(long, short, global = true, default_value = "config/cachet.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Ask every source about ADDRESS now and show each certificate with why it is accepted
    /// or refused; exit 0 when a usable certificate is found, 1 when none is.
    Lookup { address: String },
    /// Every stored certificate (directory files, imported, harvested, pending) by address:
    /// fingerprint, source, trust, expiry, capabilities, last seen. Works while the gateway runs.
    List {
        /// Only this address.
        address: Option<String>,
        /// Only certificates waiting for an operator's approval.
        #[arg(long)]
        pending: bool,
    },
    /// One certificate by fingerprint (or a unique prefix), or every certificate of an address.
    Show { query: String },
    /// Add the certificates of PEM or DER files to the store (source "imported"); the running
    /// gateway uses them at its next lookup.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove an imported or harvested certificate (one from certificates.dir: delete the file).
    Remove { fingerprint: String },
    /// Vouch for one certificate that does not chain to a trust anchor (a pending harvest):
    /// it is used from the next lookup, still subject to validity, key usage and revocation.
    Approve { fingerprint: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Every key: address, algorithm, expiry, where the key lives, its use (sign / decrypt).
    List,
    /// Import a private key with its certificate (PEM, encrypted PEM or PKCS#12): into the
    /// token when [keys.pkcs11] is configured, else into keys.dir with mode 0600.
    Import {
        file: PathBuf,
        /// File holding the password of FILE (default: keys.passphrase_file).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Every message, its queue, its direction (outbound or inbound) and each recipient's state.
    List,
    /// One message's envelope and headers.
    Show { id: String },
    /// Keep a message from being delivered until released.
    Hold { id: String },
    /// Release a held message for delivery.
    Release { id: String },
    /// Deliver a deferred message now.
    Retry { id: String },
    /// Remove a message for good.
    Delete { id: String },
}

fn init_logging(format: config::LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
        config::LogFormat::Text => builder.init(),
    }
}

fn run_serve(config: PathBuf) -> ExitCode {
    // Logging is configured from the file; load it once just for that (serve re-validates).
    let (format, level) = match config::Config::load(&config) {
        Ok(c) => (c.log.format, c.log.level),
        Err(errors) => {
            eprintln!("{}", app::format_errors(&errors));
            return ExitCode::from(2);
        }
    };
    init_logging(format, &level);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(app::serve(config));
    // Sessions and deliveries have drained by now; what may remain on the blocking pool is a
    // CRL or OCSP fetch (up to certificates.fetch_timeout): do not let it hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachet: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => run_serve(config),
        Command::Check { config } => match Runtime::load(&config) {
            Ok(rt) => {
                println!("{}: ok", config.display());
                for line in cachet::check::check_summary(&rt) {
                    println!("{line}");
                }
                for line in cachet::store::import::check_lines(&rt.stores) {
                    println!("{line}");
                }
                for warning in spool::modes::exposed(&rt.config) {
                    println!("{warning}");
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}", app::format_errors(&errors));
                eprintln!("{} problem(s) found", errors.len());
                ExitCode::from(1)
            }
        },
        Command::Explain {
            config,
            from,
            to,
            header_from,
            subject,
            client,
            user,
            tls_fingerprint,
            json,
        } => match Runtime::load(&config) {
            Ok(rt) => {
                // The same cache-reading decision as the gateway: fill the cache first.
                if !rt.stores.directory.is_empty() {
                    let metrics = cachet::metrics::Metrics::default();
                    tokio::runtime::Runtime::new()
                        .expect("tokio runtime")
                        .block_on(rt.stores.prefetch(&to, &metrics));
                }
                let who = cachet::pipeline::explain::ExplainClient {
                    ip: client,
                    user,
                    tls_fingerprint,
                };
                let v = cachet::pipeline::explain::explain(
                    &rt,
                    &who,
                    &from,
                    header_from.as_deref(),
                    &to,
                    subject.as_deref(),
                );
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print!("{}", cachet::pipeline::explain::render_text(&v));
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}", app::format_errors(&errors));
                ExitCode::from(2)
            }
        },
        Command::Config {
            config,
            defaults,
            changed,
        } => {
            if defaults || !changed {
                print!("{}", config::params::render_defaults());
                return ExitCode::SUCCESS;
            }
            let source = match std::fs::read_to_string(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cachet config: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            match config::params::render_changed(&source) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cachet config: {}: {e}", config.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Healthcheck { admin } => match cachet::admin::probe(&admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cachet healthcheck: {e}");
                ExitCode::from(1)
            }
        },
        Command::Passwd { user } => {
            // Wiped when dropped, like every other secret cachet reads.
            let mut password = zeroize::Zeroizing::new(String::new());
            if std::io::stdin().read_line(&mut password).is_err()
                || password.trim_end_matches(['\r', '\n']).is_empty()
            {
                eprintln!("cachet passwd: give the password on standard input");
                return ExitCode::from(2);
            }
            let password = password.trim_end_matches(['\r', '\n']);
            match cachet::users::hash_line(&user, password) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cachet passwd: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo { dir, listen, admin } => match demo::prepare(&dir, &listen, &admin) {
            Ok(config) => run_serve(config),
            Err(e) => {
                eprintln!("cachet demo: {e}");
                ExitCode::from(1)
            }
        },
        Command::Certs { config, action } => certs_manage(config, action),
        Command::Keys { config, action } => {
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{}", app::format_errors(&errors));
                    return ExitCode::from(2);
                }
            };
            match action {
                KeysAction::List => {
                    let (text, problems) = cachet::store::import::list(&cfg);
                    print!("{text}");
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    ExitCode::SUCCESS
                }
                KeysAction::Import {
                    file,
                    password_file,
                } => match cachet::store::import::import(&cfg, &file, password_file.as_deref()) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cachet keys import: {e}");
                        ExitCode::from(1)
                    }
                },
            }
        }
        Command::Queue { config, action } => {
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{}", app::format_errors(&errors));
                    return ExitCode::from(2);
                }
            };
            let sp = match spool::Spool::attach(&cfg.spool.dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cachet queue: {e}");
                    return ExitCode::from(1);
                }
            };
            use spool::admin;
            let r = match action {
                QueueAction::List => admin::list(&sp),
                QueueAction::Show { id } => admin::show(&sp, &id),
                QueueAction::Hold { id } => admin::hold(&sp, &id),
                QueueAction::Release { id } => admin::release(&sp, &id),
                QueueAction::Retry { id } => admin::retry(&sp, &id),
                QueueAction::Delete { id } => admin::delete(&sp, &id),
            };
            match r {
                Ok(text) => {
                    println!("{}", text.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cachet queue: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `cachet certs lookup ADDRESS`.
fn certs_lookup(config: PathBuf, address: String) -> ExitCode {
    match Runtime::load(&config) {
        Ok(rt) => {
            let dir = rt
                .config
                .certificates
                .as_ref()
                .map(|c| c.dir.display().to_string());
            let (text, found) = tokio::runtime::Runtime::new()
                .expect("tokio runtime")
                .block_on(async {
                    use cachet::store::revocation::Status;
                    // What the gateway would know: one refresh round of CRLs and OCSP
                    // answers for the loaded certificates (and the cache it keeps).
                    if let Some(settings) = app::revocation_settings(&rt) {
                        cachet::store::revocation::refresh::round(
                            &rt.stores.revocation,
                            &settings,
                            rt.stores.revocation_targets(),
                        )
                        .await;
                    }
                    let in_use = rt.config.policy.revocation_in_use();
                    let now = std::time::SystemTime::now();
                    let status = |der: &rustls_pki_types::CertificateDer<'static>,
                                      chain: &[rustls_pki_types::CertificateDer<'static>]| {
                            if !in_use {
                                return Ok("not checked (revocation = \"off\")".to_string());
                            }
                            match rt.stores.revocation.status(der, chain, &rt.stores.trust, now) {
                                Status::Good(s) => Ok(format!("good ({})", s.name())),
                                Status::Revoked(s) => Err(format!("revoked ({})", s.name())),
                                Status::Unknown { reason, pending } => Ok(format!(
                                    "unknown: {reason}{}",
                                    if pending {
                                        " (its first answer is not fetched yet)"
                                    } else {
                                        ""
                                    }
                                )),
                            }
                        };
                    cachet::store::directory::report::certs_lookup(
                        &rt.stores.certs,
                        &rt.stores.directory,
                        dir.as_deref(),
                        &address,
                        &status,
                    )
                    .await
                });
            print!("{text}");
            if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(errors) => {
            eprintln!("{}", app::format_errors(&errors));
            ExitCode::from(2)
        }
    }
}

/// `cachet certs ...`: `lookup` asks every source through a loaded runtime; `list`, `show`,
/// `import`, `remove` and `approve` work on the certificate database of `config`, from this
/// process, while the gateway may be running.
fn certs_manage(config: PathBuf, action: CertsAction) -> ExitCode {
    use cachet::store::certdb::admin;
    let action = match action {
        CertsAction::Lookup { address } => return certs_lookup(config, address),
        other => other,
    };
    let cfg = match config::Config::load(&config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", app::format_errors(&errors));
            return ExitCode::from(2);
        }
    };
    let Some(c) = &cfg.certificates else {
        eprintln!(
            "cachet certs: {}: no [certificates] section",
            config.display()
        );
        return ExitCode::from(2);
    };
    let (trust, problems) = cachet::store::TrustAnchors::load(&c.trust);
    for p in &problems {
        eprintln!("warning: {p}");
    }
    let store = match cachet::store::CertStore::attach(&c.store, &trust) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cachet certs: {e}");
            return ExitCode::from(1);
        }
    };
    let now = std::time::SystemTime::now();
    let result: Result<String, String> = match action {
        CertsAction::Lookup { address } => return certs_lookup(config, address),
        CertsAction::List { address, pending } => {
            use std::io::Write;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            let _ = writeln!(out, "{}", admin::LIST_HEADER);
            let filter = admin::Filter { address, pending };
            store
                .entries(&filter, now, &mut |addr, e| {
                    let _ = writeln!(out, "{}", admin::list_line(addr, &e));
                })
                .map(|()| String::new())
        }
        CertsAction::Show { query } => store.show(&query, now).and_then(|v| {
            if v.is_empty() {
                Err(format!("no certificate for {query}"))
            } else {
                Ok(v.iter().map(admin::show_text).collect::<Vec<_>>().join("\n"))
            }
        }),
        CertsAction::Import { files } => {
            let (text, ok) = admin::import_files(&store, &files, now);
            if ok { Ok(text) } else { Err(text) }
        }
        CertsAction::Remove { fingerprint } => store
            .remove(&fingerprint)
            .map(|fp| format!("removed {fp}\n")),
        CertsAction::Approve { fingerprint } => store.approve(&fingerprint).map(|fp| {
            format!("approved {fp}: used from the next lookup (validity, key usage and revocation still apply)\n")
        }),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("cachet certs: {e}");
            if !e.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(1)
        }
    }
}
