//! The `molar` command: serve the API, migrate the database, or check a running server.

use std::process::ExitCode;

use chrono::Datelike;
use clap::{Parser, Subcommand};
use molar::config::{Config, Environment};
use molar::Server;

#[derive(Parser)]
#[command(
    name = "molar",
    version,
    about = "Multi-tenant dental clinic management backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (the default).
    Serve,
    /// Apply the embedded migrations as the owning role (MIGRATION_DATABASE_URL).
    Migrate,
    /// Create a clinic and its first owner (for deployments with sign-up switched off).
    /// The owner's password is read from MOLAR_OWNER_PASSWORD.
    CreateClinic {
        #[arg(long)]
        name: String,
        /// IANA time zone, e.g. Europe/Berlin.
        #[arg(long)]
        timezone: String,
        /// ISO 4217 currency code, e.g. EUR.
        #[arg(long)]
        currency: String,
        #[arg(long)]
        owner_email: String,
        #[arg(long)]
        owner_name: String,
    },
    /// Audit trail maintenance.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Document storage maintenance.
    Documents {
        #[command(subcommand)]
        command: DocumentsCommand,
    },
    /// Print the argon2id hash of a password read from standard input (for seeding).
    HashPassword,
    /// Print the OpenAPI 3.1 document the server serves at /api/v2/openapi.json (JSON, on
    /// standard output) for this configuration; needs no database or running server.
    Openapi,
    /// Exit 0 when the local server's /api/v2/health answers 200 (for container health checks).
    Healthcheck {
        /// The URL to probe; defaults to http://127.0.0.1:$PORT/api/v2/health.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every seal of the hash chain; exit 1 and name the first broken link of
    /// each clinic whose events were changed, removed or inserted after sealing.
    Verify,
    /// Seal all events that have settled (normally done by the server every minute).
    Seal {
        /// Print each transaction of the round, and, when PostgreSQL runs on this machine,
        /// how much of its time its backend spent on a core and how much waiting for one.
        #[arg(long)]
        each: bool,
    },
    /// Drop audit events older than the retention (AUDIT_RETENTION_MONTHS, default 72) as
    /// the owning role (MIGRATION_DATABASE_URL); the chain stays verifiable.
    Prune {
        /// Drop events before this date (YYYY-MM-DD, UTC) instead.
        #[arg(long)]
        before: Option<chrono::NaiveDate>,
    },
}

#[derive(Subcommand)]
enum DocumentsCommand {
    /// Re-wrap every document's data key under FILE_ENCRYPTION_KEY, opening keys wrapped
    /// under FILE_ENCRYPTION_KEYS (content is not rewritten; safe while servers run).
    Rewrap,
    /// Remove the content of documents deleted more than DOCUMENT_RETENTION_DAYS ago (their
    /// rows stay, marked purged), then sweep objects that no document describes.
    Purge {
        /// Purge documents deleted before this date (YYYY-MM-DD, UTC) instead.
        #[arg(long)]
        before: Option<chrono::NaiveDate>,
    },
}

/// mimalloc: per request, less server CPU than glibc's malloc on a patient read and on a
/// page of patients (bench/history.md, "seventh session" and "eighth session").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults suit a process that owns the machine: arena memory committed
/// eagerly, freed memory kept for a second (ten for whole arena chunks), transparent huge
/// pages. For a server that idles between bursts they cost a few megabytes of resident
/// memory each, so freed memory goes back to the OS at once (argon2's 19 MiB working
/// memory included), arenas commit as they are used, and the process does without huge
/// pages. mimalloc reads these options when it first reserves memory, before `main`, so
/// they are set by an initialiser that runs before mimalloc's own (its priority is 101).
/// A `MIMALLOC_*` variable in the environment still decides its option.
/// The options, their environment variables and our values; `mi_option_t` values in
/// mimalloc v3's mimalloc.h (the bindings do not name all three).
#[cfg(target_os = "linux")]
const ALLOCATOR_SETTINGS: [(
    &std::ffi::CStr,
    libmimalloc_sys::mi_option_t,
    std::ffi::c_long,
); 3] = [
    (c"MIMALLOC_ARENA_EAGER_COMMIT", 4, 0),
    (c"MIMALLOC_PURGE_DELAY", 15, 0),
    (c"MIMALLOC_ALLOW_THP", 43, 0),
];

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

#[cfg(target_os = "linux")]
extern "C" fn allocator_options() {
    for (variable, option, value) in ALLOCATOR_SETTINGS {
        // SAFETY: getenv reads the environment, which nothing writes before main; the
        // option is one of mimalloc's integer options, and any value is valid for it.
        unsafe {
            if libc::getenv(variable.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The container health check needs only the address, not a valid configuration.
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return healthcheck_only(url.clone());
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("molar: {e}");
            return ExitCode::from(2);
        }
    };
    // The document needs the configuration (its limits show in it), nothing else.
    if let Some(Command::Openapi) = &cli.command {
        return print_openapi(&config);
    }
    let runtime = match start_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::CreateClinic {
                name,
                timezone,
                currency,
                owner_email,
                owner_name,
            } => {
                let password = std::env::var("MOLAR_OWNER_PASSWORD").map_err(|_| {
                    anyhow::anyhow!("set MOLAR_OWNER_PASSWORD to the owner's initial password")
                })?;
                create_clinic(
                    config,
                    name,
                    timezone,
                    currency,
                    owner_email,
                    owner_name,
                    password,
                )
                .await
            }
            Command::Audit { command } => audit(config, command).await,
            Command::Documents { command } => documents(config, command).await,
            Command::HashPassword => hash_password(&config).await,
            Command::Healthcheck { .. } | Command::Openapi => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molar: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "molar exited with an error");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    molar::telemetry::init_logging(&config);
    let addr = (config.host.clone(), config.port);
    let server = Server::prepare(config).await?;
    let listener = tokio::net::TcpListener::bind(addr.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", addr.0, addr.1))?;
    server.run(listener, molar::shutdown_signal()).await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    molar::telemetry::init_logging(&config);
    let url = match (&config.migration_database_url, &config.database_url) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) if config.environment != Environment::Production => {
            tracing::warn!("MIGRATION_DATABASE_URL is not set; migrating with DATABASE_URL");
            u.clone()
        }
        _ => anyhow::bail!("MIGRATION_DATABASE_URL is required to migrate"),
    };
    let done = molar::db::migrate(&url).await?;
    let version = done.version.map_or("none".to_owned(), |v| v.to_string());
    if done.applied == 0 {
        println!("migrations applied: 0 (database up to date at {version})");
    } else {
        println!(
            "migrations applied: {} (database now at {version})",
            done.applied
        );
    }
    Ok(())
}

fn print_openapi(config: &Config) -> ExitCode {
    use std::io::Write;
    match molar::openapi::document_json(config.into()) {
        Ok(json) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{json}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("molar: cannot write the document: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("molar: cannot render the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck_only(url: Option<String>) -> ExitCode {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let host = match host.as_str() {
        "0.0.0.0" | "::" | "[::]" | "" => "127.0.0.1".to_owned(),
        h => h.to_owned(),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let url = url.unwrap_or_else(|| format!("http://{host}:{port}/api/v2/health"));
    let runtime = match start_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(molar::http::client::get_status(
        &url,
        std::time::Duration::from_secs(3),
    )) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("molar: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("molar: {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn create_clinic(
    config: Config,
    name: String,
    timezone: String,
    currency: String,
    email: String,
    full_name: String,
    password: String,
) -> anyhow::Result<()> {
    use molar::clinic::create::{register, NewClinic, NewOwner, RegisterClinic};
    molar::telemetry::init_logging(&config);
    let server = Server::prepare(config).await?;
    let body = RegisterClinic {
        clinic: NewClinic {
            name,
            timezone,
            currency,
            phone: None,
        },
        owner: NewOwner {
            email,
            password,
            full_name,
            is_provider: None,
        },
    };
    let device = molar::auth::sessions::Device::default();
    match register(server.state(), body, &device).await {
        Ok(r) => {
            println!(
                "created clinic {} ({}) with owner {} ({})",
                r.clinic.name, r.clinic.id, r.user.email, r.user.id
            );
            Ok(())
        }
        Err(molar::error::AppError::Validation(errors)) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            anyhow::bail!("invalid clinic: {}", lines.join("; "))
        }
        Err(e) => anyhow::bail!("could not create the clinic: {e}"),
    }
}

async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<()> {
    molar::telemetry::init_logging(&config);
    if let AuditCommand::Prune { before } = command {
        let url = config
            .migration_database_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("MIGRATION_DATABASE_URL is required to prune"))?;
        let before = match before {
            Some(d) => d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
            None => {
                let months = chrono::Months::new(config.audit_retention_months);
                let first = chrono::Utc::now()
                    .date_naive()
                    .with_day0(0)
                    .unwrap_or_default();
                first
                    .checked_sub_months(months)
                    .unwrap_or(first)
                    .and_hms_opt(0, 0, 0)
                    .unwrap_or_default()
                    .and_utc()
            }
        };
        let dropped = molar::audit::prune(&url, before).await?;
        println!("dropped {dropped} monthly partition(s) of audit events before {before}");
        return Ok(());
    }
    let server = Server::prepare(config).await?;
    let db = &server.state().db;
    match command {
        AuditCommand::Verify => {
            let broken = molar::audit::verify(db).await?;
            if broken.is_empty() {
                println!("audit chain intact");
                Ok(())
            } else {
                for b in &broken {
                    println!("clinic {} seal {}: {}", b.clinic_id, b.seq, b.problem);
                }
                anyhow::bail!("the audit chain is broken in {} clinic(s)", broken.len())
            }
        }
        AuditCommand::Prune { .. } => Ok(()),
        AuditCommand::Seal { each } => {
            let settle = server.state().config.request_timeout * 2;
            let mut split = SealSplit::default();
            let round = if each {
                molar::audit::seal_observed(db, settle, &mut |step| split.observe(step)).await?
            } else {
                molar::audit::seal(db, settle).await?
            };
            println!(
                "sealed {} event(s) in {} seal(s), {} transaction(s), the longest {:.1} ms, the first {:.1} ms, \
                 after a warm-up of {:.1} ms{}",
                round.events,
                round.seals,
                round.transactions,
                round.longest.as_secs_f64() * 1e3,
                round.first.as_secs_f64() * 1e3,
                round.warm_up.as_secs_f64() * 1e3,
                split.summary()
            );
            Ok(())
        }
    }
}

/// `molar audit seal --each`: prints each transaction of the round and, where the
/// backend's scheduler statistics can be read (`/proc/<pid>/schedstat`, PostgreSQL on this
/// machine), splits its time between running on a core and waiting in the run queue. A
/// transaction's share is the difference from the reading after the one before it, the
/// backend being idle in between.
#[derive(Default)]
struct SealSplit {
    /// The last reading: nanoseconds on a core, nanoseconds waiting for one.
    last: Option<(u64, u64)>,
    transactions: u32,
    /// The longest transaction that sealed: its time, on a core, waiting.
    longest: Option<(std::time::Duration, u64, u64)>,
    /// The most time any transaction that sealed spent on a core.
    most_on_a_core: u64,
}

impl SealSplit {
    fn schedstat(pid: i32) -> Option<(u64, u64)> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim() != "postgres" {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
        let mut fields = stat.split_whitespace().map(str::parse::<u64>);
        Some((fields.next()?.ok()?, fields.next()?.ok()?))
    }

    fn observe(&mut self, step: molar::audit::Step) {
        let now = Self::schedstat(step.backend_pid);
        let split = now.zip(self.last).map(|((cpu, wait), (cpu0, wait0))| {
            (cpu.saturating_sub(cpu0), wait.saturating_sub(wait0))
        });
        self.last = now;
        let ms = |ns: u64| ns as f64 / 1e6;
        let what = if step.warm_up {
            "warm-up".to_owned()
        } else {
            self.transactions += 1;
            format!("transaction {}", self.transactions)
        };
        let mut line = format!(
            "{what}: {:.1} ms, {} event(s) in {} seal(s)",
            step.took.as_secs_f64() * 1e3,
            step.chunk.events,
            step.chunk.seals
        );
        if let Some((cpu, wait)) = split {
            line.push_str(&format!(
                "; {:.1} ms on a core, {:.1} ms waiting for one",
                ms(cpu),
                ms(wait)
            ));
            if !step.warm_up {
                self.most_on_a_core = self.most_on_a_core.max(cpu);
                if self.longest.is_none_or(|(took, _, _)| step.took > took) {
                    self.longest = Some((step.took, cpu, wait));
                }
            }
        }
        println!("{line}");
    }

    /// What the round's summary line adds, when the split was measured.
    fn summary(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        match self.longest {
            Some((_, cpu, wait)) => format!(
                "; the longest spent {:.1} ms on a core and {:.1} ms waiting for one; the most any spent on a core {:.1} ms",
                ms(cpu),
                ms(wait),
                ms(self.most_on_a_core)
            ),
            None => String::new(),
        }
    }
}

async fn documents(config: Config, command: DocumentsCommand) -> anyhow::Result<()> {
    use molar::documents::maintenance;
    molar::telemetry::init_logging(&config);
    let retention = chrono::Duration::days(i64::from(config.document_retention_days));
    let grace = (config.upload_timeout * 2).max(std::time::Duration::from_secs(3600));
    let server = Server::prepare(config).await?;
    let state = server.state();
    let docs = state
        .documents
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("documents are off: set FILE_ENCRYPTION_KEY"))?;
    match command {
        DocumentsCommand::Rewrap => {
            let n = maintenance::rewrap(&state.db, docs).await?;
            println!(
                "re-wrapped {n} document key(s) under {}",
                docs.keys.current_id()
            );
        }
        DocumentsCommand::Purge { before } => {
            let before = match before {
                Some(d) => d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
                None => chrono::Utc::now() - retention,
            };
            let n = maintenance::purge(&state.db, docs, before).await?;
            println!("purged the content of {n} document(s) deleted before {before}");
            let swept = maintenance::sweep(&state.db, docs, grace).await?;
            println!("swept {swept} object(s) that no document describes");
        }
    }
    Ok(())
}

async fn hash_password(config: &Config) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if let Err(e) = molar::auth::password::check_policy("password", password, &[]) {
        anyhow::bail!("{}: {}", e.field, e.message);
    }
    let hasher = molar::auth::password::PasswordHashing::new(config.password_hash_concurrency)?;
    let hash = hasher
        .hash(password)
        .await
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(())
}

/// Builds the async runtime, or says why not and fails.
fn start_runtime(
    mut builder: tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("molar: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The initialiser ran before mimalloc reserved memory: the options hold their values
    /// (where the environment running the tests does not set them).
    #[test]
    fn the_allocator_options_are_set_before_main() {
        for (variable, option, expected) in super::ALLOCATOR_SETTINGS {
            let name = variable.to_str().unwrap_or("?");
            if std::env::var_os(name).is_none() {
                // SAFETY: reads one of mimalloc's integer options.
                let value = unsafe { libmimalloc_sys::mi_option_get(option) };
                assert_eq!(value, expected, "{name}");
            }
        }
    }
}
