//! Development default: with no `DATABASE_URL`, run a private PostgreSQL cluster from the
//! installed binaries, with its data under `.molar/` and a Unix socket only it and this
//! user can reach. PostgreSQL refuses to run as root, so as root the cluster runs as an
//! unprivileged system user.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use secrecy::SecretString;
use sqlx::Connection;
use tokio::process::Command;

use super::APP_ROLE;

/// The socket "port": it only names the socket file, so it cannot collide with a TCP server.
const SOCKET_PORT: u16 = 54329;
const OWNER_ROLE: &str = "molar_owner";
const SERVER_ROLE: &str = "molar_server";
const DATABASE: &str = "molar";

pub struct EmbeddedPostgres {
    bindir: PathBuf,
    data_dir: PathBuf,
    run_as: Option<String>,
    started_here: bool,
}

pub struct EmbeddedUrls {
    pub server: SecretString,
    pub owner: SecretString,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn output(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .output()
        .await
        .context("could not run a PostgreSQL program")
}

/// Finds the directory holding `initdb` and `pg_ctl`.
async fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = output(Command::new("pg_config").arg("--bindir")).await {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "no PostgreSQL server binaries found (looked at `pg_config --bindir` and \
             /usr/lib/postgresql/*/bin); install them with `apt-get install postgresql` \
             or set DATABASE_URL"
        ),
    }
}

/// The unprivileged account a root process runs the cluster as.
async fn unprivileged_user() -> anyhow::Result<String> {
    for name in ["postgres", "molar"] {
        if output(Command::new("id").arg("-u").arg(name))
            .await?
            .status
            .success()
        {
            return Ok(name.to_owned());
        }
    }
    let out = output(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "molar",
    ]))
    .await?;
    if !out.status.success() {
        bail!("could not create the unprivileged user `molar` for the development database");
    }
    Ok("molar".to_owned())
}

impl EmbeddedPostgres {
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn socket_dir(&self) -> PathBuf {
        self.data_dir
            .parent()
            .map(|p| p.join("run"))
            .unwrap_or_else(|| PathBuf::from(".molar/run"))
    }

    fn url(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@localhost/{database}?host={}&port={SOCKET_PORT}",
            self.socket_dir().display()
        )
    }

    /// Starts (or reuses) the development cluster, migrates it and returns the URLs of the
    /// server's login role and of the owning role.
    pub async fn start(base: &Path) -> anyhow::Result<(EmbeddedPostgres, EmbeddedUrls)> {
        std::fs::create_dir_all(base).context("could not create the .molar directory")?;
        let base = base
            .canonicalize()
            .context("could not resolve the .molar directory")?;
        let mut pg = EmbeddedPostgres {
            bindir: find_bindir().await?,
            data_dir: base.join("pgdata"),
            run_as: None,
            started_here: false,
        };
        let run = pg.socket_dir();
        std::fs::create_dir_all(&pg.data_dir)?;
        std::fs::create_dir_all(&run)?;
        if is_root() {
            let user = unprivileged_user().await?;
            for dir in [&pg.data_dir, &run] {
                let out = output(Command::new("chown").arg("-R").arg(&user).arg(dir)).await?;
                if !out.status.success() {
                    bail!("could not hand {} to user {user}", dir.display());
                }
            }
            let probe = output(
                Command::new("runuser")
                    .args(["-u", &user, "--", "test", "-w"])
                    .arg(&pg.data_dir),
            )
            .await?;
            if !probe.status.success() {
                bail!(
                    "user {user} cannot reach {}; run Molar from a directory other users can \
                     traverse, or set DATABASE_URL",
                    pg.data_dir.display()
                );
            }
            pg.run_as = Some(user);
        }
        set_private(&pg.data_dir)?;
        set_private(&run)?;

        if !pg.data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %pg.data_dir.display(), "initialising the development database");
            let out = output(pg.command("initdb").arg("-D").arg(&pg.data_dir).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]))
            .await?;
            if !out.status.success() {
                bail!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }

        let running = output(
            pg.command("pg_ctl")
                .arg("-D")
                .arg(&pg.data_dir)
                .arg("status"),
        )
        .await?
        .status
        .success();
        if !running {
            let options = format!(
                "-p {SOCKET_PORT} -k {} -c listen_addresses='' -c unix_socket_permissions=0700",
                run.display()
            );
            let out = output(
                pg.command("pg_ctl")
                    .arg("-D")
                    .arg(&pg.data_dir)
                    .arg("-l")
                    .arg(pg.data_dir.join("postgres.log"))
                    .args(["-w", "-t", "60", "-o", &options, "start"]),
            )
            .await?;
            if !out.status.success() {
                bail!(
                    "the development database did not start; see {}",
                    pg.data_dir.join("postgres.log").display()
                );
            }
            pg.started_here = true;
            tracing::info!(socket = %run.display(), "development database started");
        } else {
            tracing::info!(socket = %run.display(), "development database already running");
        }

        pg.prepare().await?;
        let urls = EmbeddedUrls {
            server: SecretString::from(pg.url(SERVER_ROLE, DATABASE)),
            owner: SecretString::from(pg.url(OWNER_ROLE, DATABASE)),
        };
        super::migrate(&urls.owner).await?;
        // The app role exists once migrations ran; the server's login role joins it.
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres", "postgres")).await?;
        // Not a macro: DDL, which cannot be prepared.
        sqlx::raw_sql(&format!("GRANT {APP_ROLE} TO {SERVER_ROLE}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok((pg, urls))
    }

    /// Creates the owning role, the server's login role and the database when missing.
    async fn prepare(&self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres", "postgres"))
            .await
            .context("could not connect to the development database")?;
        for (role, attrs) in [(OWNER_ROLE, "LOGIN CREATEROLE"), (SERVER_ROLE, "LOGIN")] {
            let exists = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS "exists!""#,
                role
            )
            .fetch_one(&mut admin)
            .await?;
            if !exists {
                // Not a macro: DDL, which cannot be prepared.
                sqlx::raw_sql(&format!("CREATE ROLE {role} {attrs}"))
                    .execute(&mut admin)
                    .await?;
            }
        }
        let exists = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
            DATABASE
        )
        .fetch_one(&mut admin)
        .await?;
        if !exists {
            // Not a macro: DDL, which cannot be prepared.
            sqlx::raw_sql(&format!("CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}"))
                .execute(&mut admin)
                .await?;
        }
        admin.close().await?;
        Ok(())
    }

    /// Stops the cluster if this process started it.
    pub async fn stop(&self) {
        if !self.started_here {
            return;
        }
        let result = output(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "fast", "-w", "stop"]),
        )
        .await;
        match result {
            Ok(o) if o.status.success() => tracing::info!("development database stopped"),
            _ => tracing::warn!("the development database did not stop cleanly"),
        }
    }
}

#[cfg(unix)]
fn set_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("could not restrict {}", dir.display()))
}
