//! The `molar` command: serve the API, migrate the database, or check a running server.

use std::process::ExitCode;

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
    /// Exit 0 when the local server's /api/v2/health answers 200 (for container health checks).
    Healthcheck {
        /// The URL to probe; defaults to http://127.0.0.1:$PORT/api/v2/health.
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("molar: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("molar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Healthcheck { url } => healthcheck(&config, url).await,
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
    molar::db::migrate(&url).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn healthcheck(config: &Config, url: Option<String>) -> anyhow::Result<()> {
    let host = match config.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        h => h,
    };
    let url = url.unwrap_or_else(|| format!("http://{host}:{}/api/v2/health", config.port));
    let status = molar::http::client::get_status(&url, std::time::Duration::from_secs(3)).await?;
    if status == 200 {
        Ok(())
    } else {
        anyhow::bail!("{url} answered {status}")
    }
}
