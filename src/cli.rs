//! The command line: `gatehouse [serve]` runs the server, `gatehouse admin
//! create` creates or promotes an admin while the server is stopped,
//! `gatehouse export` and `gatehouse import` move a store's users to a file
//! and back (`transfer`). This is the one place where an error becomes an
//! exit code (and one line on stderr).

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::app::{open_store, App};
use crate::config::{Overrides, Settings};
use crate::domain::password::PasswordHasher;
use crate::domain::unix_now;
use crate::domain::user::{valid_email, valid_name, valid_password};
use crate::log::RequestLog;
use crate::server;
use crate::store::Import;
use crate::transfer::{self, ExportOptions};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "User authentication over JWTs, database included."
)]
struct Cli {
    /// Config file to read instead of ./config.toml.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Listen address (server.host).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Listen port (server.port); 0 picks a free one.
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Database and key folder (data_dir).
    #[arg(long, global = true, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage admins while the server is stopped.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Write every user (with password hashes), the signing keys and, with
    /// --with-audit, the audit log to a new file (mode 0600). sled: while
    /// the server is stopped (a running one serves GET /api/admin/export);
    /// PostgreSQL: any time, one consistent snapshot.
    Export {
        /// The file to create (never written over).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Include the audit log.
        #[arg(long)]
        with_audit: bool,
    },
    /// Load an export (or, with --from mongoexport, the tutorial's MongoDB
    /// users) into the configured store, which must have no users: all of
    /// it, or nothing.
    Import {
        /// The file to read.
        file: PathBuf,
        /// What wrote the file: a gatehouse export (the default) or
        /// `mongoexport --collection users` (JSON lines or --jsonArray).
        #[arg(long, value_name = "FORMAT", value_enum)]
        from: Option<ImportSource>,
        /// With --from mongoexport: skip (and list) the rows that cannot be
        /// imported instead of refusing the file.
        #[arg(long, requires = "from")]
        skip_invalid: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ImportSource {
    Mongoexport,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Create an admin, or make an existing user admin with this password.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    limit_malloc_arenas();
    private_files();
    let (_log_guard, request_log) = crate::log::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gatehouse: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, request_log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, request_log: RequestLog) -> anyhow::Result<()> {
    let overrides = Overrides {
        config_file: cli.config,
        host: cli.host,
        port: cli.port,
        data_dir: cli.data_dir,
    };
    let settings = Settings::load(&overrides)?;
    match cli.command {
        None | Some(Command::Serve) => serve(settings, request_log).await,
        Some(Command::Admin {
            action:
                AdminAction::Create {
                    email,
                    name,
                    password_stdin,
                },
        }) => admin_create(settings, &email, &name, password_stdin).await,
        Some(Command::Export { out, with_audit }) => export(settings, &out, with_audit).await,
        Some(Command::Import {
            file,
            from,
            skip_invalid,
        }) => import(settings, &file, from, skip_invalid).await,
    }
}

async fn serve(settings: Settings, request_log: RequestLog) -> anyhow::Result<()> {
    tracing::debug!(?settings, "configuration");
    // Install the signal handlers before the port is bound, so a SIGTERM
    // that arrives right after start-up still shuts down gracefully.
    let shutdown = shutdown_signal()?;
    raise_open_files_limit(settings.server.max_connections);
    let mut app = App::open(settings).await?;
    app.request_log = request_log;
    let app = Arc::new(app);
    let listener = server::bind(&app).await?;
    server::serve(listener, app, shutdown).await
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed
/// when this returns, not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

async fn admin_create(
    settings: Settings,
    email: &str,
    name: &str,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let email = valid_email(email).map_err(|e| anyhow::anyhow!("--email: {}", e.0))?;
    let name = valid_name(name).map_err(|e| anyhow::anyhow!("--name: {}", e.0))?;
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        prompt_password()?
    };
    valid_password(&password, settings.auth.min_password_len)
        .map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let store = open_store(&settings, crate::metrics::Metrics::off()).await?;
    let hash = PasswordHasher::new(settings.auth.bcrypt_cost)
        .hash(password)
        .await?;
    let (user, created) = store.upsert_admin(name, email, hash, unix_now()).await?;
    let what = if created {
        "created admin"
    } else {
        "made admin"
    };
    println!("{what} {} (_id {})", user.email, user.id);
    Ok(())
}

async fn export(settings: Settings, out: &Path, with_audit: bool) -> anyhow::Result<()> {
    if settings.store.url.is_none() && !settings.database_dir().is_dir() {
        bail!(
            "data_dir: {} holds no database to export",
            settings.data_dir.display()
        );
    }
    let secret = crate::app::generated_secret(&settings)?;
    let store = crate::app::open_store_unchanged(&settings).await;
    let store = match settings.store.url {
        Some(_) => store?,
        None => store.context("a running server exports with GET /api/admin/export")?,
    };
    // create_new: an export is never written over a file, nor into one
    // whose mode lets others read it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("--out: cannot create {}", out.display()))?;
    let options = ExportOptions {
        with_audit,
        secret,
        now: unix_now(),
    };
    let (mut chunks, counts) = transfer::spawn_export(store, options);
    let written = async {
        let mut writer = std::io::BufWriter::new(&file);
        while let Some(chunk) = chunks.recv().await {
            writer.write_all(&chunk.map_err(anyhow::Error::msg)?)?;
        }
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        anyhow::Ok(counts.await.context("the export ended early")?)
    }
    .await;
    let counts = match written {
        Ok(counts) => counts,
        Err(error) => {
            let _ = std::fs::remove_file(out);
            return Err(error.context(format!("{}: export failed, file removed", out.display())));
        }
    };
    let audit = if with_audit {
        format!(" and {} audit events", counts.events)
    } else {
        String::new()
    };
    println!(
        "exported {} users{audit} to {}",
        counts.users,
        out.display()
    );
    Ok(())
}

async fn import(
    settings: Settings,
    path: &Path,
    from: Option<ImportSource>,
    skip_invalid: bool,
) -> anyhow::Result<()> {
    let reader = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let named = |error: transfer::format::ReadError| {
        anyhow::anyhow!("{}: {error}; nothing was imported", path.display())
    };
    let (import, secret, skipped) = match from {
        None => {
            let file = transfer::format::read(reader).map_err(named)?;
            (file.import, file.secret, 0)
        }
        Some(ImportSource::Mongoexport) => {
            let found = transfer::mongo::read(reader).map_err(named)?;
            for rejected in &found.rejected {
                eprintln!("{}: {rejected}", path.display());
            }
            if !found.rejected.is_empty() && found.users.is_empty() {
                // (A `mongoexport --pretty` file, read as lines, ends here.)
                bail!(
                    "{}: none of its {} rows can be imported (listed above); nothing was imported",
                    path.display(),
                    found.rejected.len()
                );
            }
            if !found.rejected.is_empty() && !skip_invalid {
                bail!(
                    "{}: {} rows cannot be imported (listed above); nothing was imported \
                     (--skip-invalid imports the other {})",
                    path.display(),
                    found.rejected.len(),
                    found.users.len()
                );
            }
            let import = Import {
                users: found.users,
                ..Import::default()
            };
            (import, None, found.rejected.len())
        }
    };
    if settings.store.url.is_none() {
        crate::app::prepare_data_dir_for(&settings)?;
    }
    let store = open_store(&settings, crate::metrics::Metrics::off()).await?;
    let target = match &settings.store.url {
        Some(_) => "the PostgreSQL store (store.url)".to_string(),
        None => format!("the store in {}", settings.data_dir.display()),
    };
    let found = store.count_users().await?;
    if found > 0 {
        bail!("{target} has {found} users; an import needs an empty store (nothing was imported)");
    }
    let (users, events) = (import.users.len(), import.events.len());
    let keys = import.keys.is_some();
    if !store.import(import).await? {
        bail!("{target} has users now; an import needs an empty store (nothing was imported)");
    }
    // After the users: a refused or failed import leaves the key file as
    // it was. A key that cannot be stored is not fatal: the server makes a
    // new one, and sessions were not carried over anyway.
    let secret_note = match &secret {
        Some(hex) => match crate::app::store_generated_secret(&settings, hex) {
            Ok(true) => "; the generated signing secret too",
            Ok(false) => "; not the file's generated secret (this store signs with auth.secret)",
            Err(error) => {
                eprintln!(
                    "gatehouse: the users are imported, the generated secret is not: {error:#}"
                );
                "; not the generated secret (see above)"
            }
        },
        None => "",
    };
    let mut summary = format!("imported {users} users");
    if skipped > 0 {
        summary.push_str(&format!(", skipped {skipped}"));
    }
    if events > 0 {
        summary.push_str(&format!(", {events} audit events"));
    }
    if keys {
        summary.push_str(", the signing keys");
    }
    println!("{summary} into {target}{secret_note}");
    Ok(())
}

fn prompt_password() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for a password: use --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Password again: ")?;
    if first != second {
        bail!("the passwords differ");
    }
    Ok(first)
}

/// glibc gives each thread that allocates its own heap ("arena"), up to
/// eight per core; memory freed in one is not reused by the others, so a
/// process with worker, blocking-pool, hashing and sled threads holds more
/// than it uses. Two arenas measured 3 MiB less RSS after serving 100,000
/// users (BENCHMARKS.md), with no measurable cost on `/me`. Runs before any
/// thread starts; an explicit `MALLOC_ARENA_MAX` in the environment wins.
/// Nothing to do with the `mimalloc` feature (glibc's malloc is not used)
/// or on musl (one heap).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: a plain glibc tuning call, made while only this thread runs.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Every file and folder this process creates is its owner's only (0600 and
/// 0700): the data dir holds password hashes and the signing key, and sled
/// creates files of its own (its log, config, snapshots) at any time, with
/// the umask's mode. One umask covers them all, and an export file too,
/// without each creator having to ask. (`App::open` and the sled store also
/// fix the modes of what they own, for servers run without this binary.)
/// Set before any thread starts, as the umask is per process.
fn private_files() {
    // SAFETY: umask only swaps the process's mask and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Each connection is a file descriptor; many systems start processes with a
/// soft limit of 1024. Raise it to the hard limit, and say so if that is still
/// too low for `server.max_connections` (plus the database's own files).
fn raise_open_files_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below server.max_connections; excess accepts will fail"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-files limit"),
    }
}
