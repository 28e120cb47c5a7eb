//! The `tellestrek` binary: a thin command-line shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tellestrek::clock::{self, Clock};
use tellestrek::policy::Policy;
use tellestrek::server;
use tellestrek::service::Service;

/// Privacy-preserving usage statistics for peer-support schemes for health personnel.
#[derive(Parser)]
#[command(name = "tellestrek", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `human` (text; colour only at a terminal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        default_value = "human",
        env = tellestrek::logging::LOG_FORMAT_ENV,
        value_parser = tellestrek::logging::LogFormat::parse
    )]
    log_format: tellestrek::logging::LogFormat,
}

/// Environment variables `serve` reads that are not options, shown after its help.
const SERVE_ENV_HELP: &str = "\
Environment (besides the [env: ...] of each option):
  TELLESTREK_ADMIN_TOKEN  the first admin token (at least 20 characters), used only when the
                          data directory is empty; default: a random one, printed once
  TELLESTREK_NOW          a fixed instant (RFC 3339, e.g. 2026-11-23T10:00:00Z) instead of the
                          system clock, for demos and tests; default: the system clock
  TELLESTREK_LOG          this service's log level (warn, info, debug, trace) or a module's
                          (tellestrek::store=trace); other crates stay at warn and can only
                          be made quieter (sled=off); default: info

Start: tellestrek policy init policy.toml   (then edit it, and check it with `policy check`)
       tellestrek serve --policy policy.toml --data ./tellestrek-data --listen 8080";

#[derive(Subcommand)]
enum Command {
    /// Serve the API on a data directory, under a policy file.
    #[command(after_help = SERVE_ENV_HELP)]
    Serve {
        /// Data directory (created if missing).
        #[arg(
            long,
            value_name = "DIR",
            default_value = "./tellestrek-data",
            env = "TELLESTREK_DATA"
        )]
        data: PathBuf,
        /// Policy file (required; `tellestrek policy init FILE` writes a starting one).
        #[arg(long, value_name = "FILE", env = "TELLESTREK_POLICY")]
        policy: Option<PathBuf>,
        /// Address to listen on: a port (`8080`, `:8080`: loopback only), `HOST:PORT`
        /// (`localhost:8080`, `0.0.0.0:8080`) or `[IPv6]:PORT`.
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "127.0.0.1:8080",
            env = "TELLESTREK_LISTEN",
            value_parser = parse_listen
        )]
        listen: SocketAddr,
        /// Where the first admin token is written (a new file, mode 0600) when the data
        /// directory is new and TELLESTREK_ADMIN_TOKEN is not set; default DIR.admin-token
        /// beside the data directory. It is never printed or logged.
        #[arg(long, value_name = "FILE", env = "TELLESTREK_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// The server key (32 random bytes) kept outside the data directory, so a copy of the
        /// data directory alone cannot link supporters' counters to their tokens nor test
        /// guessed tokens. Default: $CREDENTIALS_DIRECTORY/server-key under systemd's
        /// LoadCredential, else a key kept in the data directory. Create one with
        /// `head -c 32 /dev/urandom > FILE; chmod 600 FILE`.
        #[arg(long, value_name = "FILE", env = "TELLESTREK_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics, without a token, on an address of
        /// their own (for a scraper on an internal network): a port (loopback only) or
        /// HOST:PORT. Default: no metrics.
        #[arg(
            long,
            value_name = "ADDR",
            env = "TELLESTREK_METRICS_LISTEN",
            value_parser = parse_listen,
            conflicts_with = "metrics_token_file"
        )]
        metrics_listen: Option<SocketAddr>,
        /// Serve Prometheus metrics at /metrics on the main address, to requests that carry
        /// `Authorization: Bearer TOKEN` with the token in FILE (its first line, at least 20
        /// characters). Default: no metrics.
        #[arg(long, value_name = "FILE", env = "TELLESTREK_METRICS_TOKEN_FILE")]
        metrics_token_file: Option<PathBuf>,
    },
    /// Create a new admin token in a data directory, for an operator who has lost every admin
    /// token. Run it with the server stopped; the token goes to a new file (mode 0600).
    AdminToken {
        /// The data directory.
        #[arg(long, value_name = "DIR", env = "TELLESTREK_DATA")]
        data: PathBuf,
        /// Where to write the new token (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The server key file, if the data directory was created with one.
        #[arg(long, value_name = "FILE", env = "TELLESTREK_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Start a demo: a fresh data directory with 20 months of simulated, released history,
    /// and a token for each role.
    Demo {
        /// Address to listen on: a port (`8080`, `:8080`: loopback only), `HOST:PORT` or
        /// `[IPv6]:PORT`.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Keep the demo data in this directory (must not exist yet) instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Write the demo's `export` lines (address, a token per role, org ids, periods) to this
        /// file, for `source FILE` in another shell; default `demo.env` in the data directory.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Verify a saved signed export offline: a JSON export, or a CSV export with its detached
    /// signature (--signature). Exit 1 if it was changed, 2 if the key or signature is malformed.
    Verify {
        /// The export file, as saved from GET /api/v1/releases.
        export: PathBuf,
        /// The public key (base64url) to trust, from GET /api/v1/signing-key; default the key
        /// named in a JSON file, which proves only that the file is intact. Required with
        /// --signature. (A base64url key may start with `-`.)
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
        /// A detached signature file (from GET /api/v1/releases.sig) over the exact bytes of
        /// EXPORT, such as a CSV export.
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Back up a data directory into a new directory: releases, ledger, keys, regimes,
    /// accounts, tokens, invites, sessions and follow-ups, with a manifest of SHA-256 sums.
    /// From a running server (its store is locked) the copy is taken by the server itself
    /// through POST /api/v1/admin/backup, so --to is a path on the server's machine.
    #[command(after_help = BACKUP_HELP)]
    Backup {
        /// The data directory (of a running or a stopped server).
        #[arg(
            long,
            value_name = "DIR",
            default_value = "./tellestrek-data",
            env = "TELLESTREK_DATA"
        )]
        data: PathBuf,
        /// Where to write the backup: a new (or empty) directory, created 0700.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Copy the raw data (counter cells, supporter counters, pseudonym secrets) of periods
        /// not yet purged too. Off by default: such a copy outlives the purge.
        #[arg(long)]
        include_raw: bool,
        /// Ask the running server at this address to take the copy, without opening the data
        /// directory here (for a scheduled job that runs as another user). Required for a
        /// data directory in use: the admin token is sent to no address you did not give.
        #[arg(long, value_name = "URL", env = "TELLESTREK_URL")]
        url: Option<String>,
        /// A file holding an admin token, for a running server; default DIR.admin-token.
        #[arg(long, value_name = "FILE", env = "TELLESTREK_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// The server key file, if kept outside the data directory: its path is recorded in
        /// the manifest (the key itself is never copied).
        #[arg(long, value_name = "FILE", env = "TELLESTREK_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Restore a backup into a new or empty data directory (--force replaces a non-empty one),
    /// after checking every file against the manifest; nothing is written on a mismatch.
    /// Run it with the server stopped.
    Restore {
        /// The backup directory (from `tellestrek backup`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The data directory to create.
        #[arg(long, value_name = "DIR", env = "TELLESTREK_DATA")]
        data: PathBuf,
        /// Replace a data directory that is not empty (its old content is deleted once the
        /// restored one is in place).
        #[arg(long)]
        force: bool,
        /// For a backup with raw data (`--include-raw`) of periods that have ended: your word
        /// that the old server drew no release after the backup was taken, so the restored
        /// server may draw them without drawing any release twice. Refused without it.
        #[arg(long)]
        no_release_since_backup: bool,
    },
}

/// Shown after `tellestrek backup --help`.
const BACKUP_HELP: &str = "\
Examples:
  tellestrek backup --data /var/lib/tellestrek --to /var/backups/tellestrek/$(date +%F)
  tellestrek restore --from /var/backups/tellestrek/2026-11-26 --data /var/lib/tellestrek
See docs/backup.md for schedules, recovery point and time, keys and a warm standby.";

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy and print its plan; exit 1 on error.
    Check {
        /// Policy file; default the built-in policy.
        file: Option<PathBuf>,
        /// A data directory (the server may be running): show what this file would change
        /// there at the next start, and from which period, or why it would be refused (exit 1).
        #[arg(long, value_name = "DATA_DIR")]
        against: Option<PathBuf>,
    },
    /// Write a commented starting policy to FILE (never over an existing file); edit it, check
    /// it, then `serve --policy FILE`.
    Init {
        /// Where to write it.
        file: PathBuf,
    },
}

/// Parses `--listen`: `8080` and `:8080` mean 127.0.0.1:8080 (loopback: a bare port never
/// opens the service to the network by accident), `HOST:PORT` is resolved with the system's
/// resolver (`localhost:8080`; the first address is used), and `IP:PORT` / `[IPv6]:PORT` are
/// taken as written.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let text = text.trim();
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| format!("`{port_only}` is not a port; use 0 to 65535"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let usage = "use a port (8080), :PORT, HOST:PORT (localhost:8080) or [IPv6]:PORT";
    if text
        .rsplit_once(':')
        .is_none_or(|(host, _)| host.is_empty())
    {
        return Err(format!("`{text}` has no port; {usage}"));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` cannot be resolved ({e}); {usage}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address; {usage}"))
}

/// Removes the data directory a failed start created, so a mistyped option or a port in use
/// leaves the disk as it was. Armed only when the directory did not exist; `keep` disarms it
/// once the server listens, after which the data is never removed.
struct FreshDir {
    /// The topmost directory this start will create (the data directory or a missing parent).
    created: Option<PathBuf>,
}

impl FreshDir {
    /// Notes whether `data` (or which of its parents) is missing before the start.
    fn note(data: &std::path::Path) -> FreshDir {
        let created = data
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last()
            .map(std::path::Path::to_path_buf);
        FreshDir { created }
    }

    /// The start succeeded: keep the directory.
    fn keep(&mut self) {
        self.created = None;
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        let Some(dir) = self.created.take() else {
            return;
        };
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => eprintln!(
                "warning: could not remove {} that this failed start created: {e}",
                dir.display()
            ),
            _ => {}
        }
    }
}

/// Writes the starting policy to `file`, refusing to overwrite anything.
fn policy_init(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} exists and is never overwritten; choose another name, or check it with `tellestrek policy check {}`",
            file.display(),
            file.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("writing {}", file.display())),
    };
    f.write_all(tellestrek::policy::starter_text().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    let shown = file.display();
    println!(
        "Wrote a starting policy to {shown}. Replace the example organisations with yours, then:\n\n    tellestrek policy check {shown}\n    tellestrek serve --policy {shown}\n"
    );
    Ok(())
}

fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    Ok(match path {
        Some(p) => Policy::from_path(p)?,
        None => Policy::builtin(),
    })
}

/// jemalloc, not the system allocator: the release job opens a period's raw database, which
/// sled reads into memory, and closes it again; glibc's malloc kept those pages (a start that
/// released and purged a 207 MB month stayed at 238 MB resident with nothing open), while
/// jemalloc, with its background thread (feature `background_threads`), hands freed pages
/// back to the system within seconds, also when the service is idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Everything this process creates (the data directory, its files, token files) is for the
    // service's user alone: directories 0700, files 0600.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    raise_descriptor_limit();
    let cli = Cli::parse();
    let spec = std::env::var(tellestrek::logging::LOG_ENV).ok();
    let filter = match tellestrek::logging::filter(spec.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Colour only for a person at a terminal: the journal and log files get plain text.
    tellestrek::logging::init(cli.log_format, filter);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            data,
            policy,
            listen,
            admin_token_file,
            key_file,
            metrics_listen,
            metrics_token_file,
        } => {
            let Some(policy) = policy else {
                anyhow::bail!(
                    "serve needs a policy file (--policy FILE or TELLESTREK_POLICY): it says which organisations, units and tags the service counts.\n\
                     Write a starting one and edit it:  tellestrek policy init policy.toml\n\
                     then start with:                   tellestrek serve --policy policy.toml\n\
                     (To try the service first: tellestrek demo)"
                );
            };
            let policy = Policy::from_path(&policy)?;
            let key = read_key_file(key_file.as_deref())?;
            let token_file = admin_token_file.unwrap_or_else(|| default_token_file(&data));
            let metrics = match (metrics_listen, metrics_token_file) {
                (Some(addr), _) => MetricsChoice::Listen(addr),
                (None, Some(file)) => {
                    MetricsChoice::Token(tellestrek::metrics::MetricsToken::from_file(&file)?)
                }
                (None, None) => MetricsChoice::Off,
            };
            let mut fresh = FreshDir::note(&data);
            serve(
                data,
                policy,
                listen,
                &mut fresh,
                &token_file,
                key,
                (metrics, cli.log_format),
            )
        }
        Command::AdminToken {
            data,
            out,
            key_file,
        } => {
            let key = read_key_file(key_file.as_deref())?;
            let token =
                tellestrek::service::recover_admin(&data, key.as_deref()).with_context(|| {
                    format!(
                        "creating an admin token in {} (is the server stopped?)",
                        data.display()
                    )
                })?;
            write_secret_file(&out, token.expose())?;
            println!(
                "Created a new admin token in {}. It is in {} (mode 0600); revoke the old ones you no longer trust.",
                data.display(),
                out.display()
            );
            Ok(())
        }
        Command::Demo {
            listen,
            data,
            env_file,
        } => demo(listen, data, env_file),
        Command::Verify {
            export,
            public_key,
            signature,
        } => verify(&export, public_key.as_deref(), signature.as_deref()),
        Command::Backup {
            data,
            to,
            include_raw,
            url,
            admin_token_file,
            key_file,
        } => {
            let token_file = admin_token_file.unwrap_or_else(|| default_token_file(&data));
            backup(
                &data,
                &to,
                include_raw,
                url.as_deref(),
                &token_file,
                key_file,
            )
        }
        Command::Restore {
            from,
            data,
            force,
            no_release_since_backup,
        } => {
            let today = clock::from_env().map_err(anyhow::Error::msg)?.today();
            restore(&from, &data, force, today, no_release_since_backup)
        }
        Command::Policy {
            command: PolicyCommand::Init { file },
        } => policy_init(&file),
        Command::Policy {
            command: PolicyCommand::Check { file, against },
        } => {
            let policy = load_policy(file.as_ref())?;
            print!("{}", tellestrek::plan::describe(&policy)?);
            if let Some(dir) = against {
                println!("\nAgainst the data directory {}:", dir.display());
                print!("{}", policy_against(&dir, &policy)?);
            }
            Ok(())
        }
    }
}

/// `tellestrek backup`: opens a stopped server's data directory itself; when a running server
/// holds it (sled's lock), asks that server to write the copy (POST /api/v1/admin/backup).
fn backup(
    data: &std::path::Path,
    to: &std::path::Path,
    include_raw: bool,
    url: Option<&str>,
    token_file: &std::path::Path,
    key_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    use tellestrek::backup;
    use tellestrek::store::{self, Store};
    let to = std::path::absolute(to).with_context(|| format!("the path {}", to.display()))?;
    let opened = match url {
        // Asked for the running server: the data directory is not touched here.
        Some(_) => None,
        None => {
            anyhow::ensure!(
                data.join("db").is_dir(),
                "{} is not a data directory (it has no db/); for a running server elsewhere, pass --url",
                data.display()
            );
            Some(Store::open(data))
        }
    };
    let manifest = match opened {
        Some(Ok(store)) => {
            let opts = backup::Options {
                include_raw,
                key_file,
                online: false,
            };
            let m = backup::take(&store, &to, &opts)
                .with_context(|| format!("backing up {}", data.display()))?;
            println!(
                "Backed up the stopped server's data directory {} to {}.",
                data.display(),
                to.display()
            );
            m
        }
        None => ask_server(url.unwrap_or_default(), &to, include_raw, token_file)?,
        // The admin token goes only to an address the operator gave: a guessed one (the
        // default port) may be another program's, which would then hold an admin token.
        Some(Err(e)) if store::is_locked(&e) => anyhow::bail!(
            "{} is in use by a running server, and a running server takes the copy itself: give its address with --url URL (or TELLESTREK_URL), and an admin token with --admin-token-file FILE",
            data.display()
        ),
        Some(Err(e)) => {
            return Err(e).with_context(|| format!("opening {}", data.display()));
        }
    };
    println!("Server key: {}", manifest.server_key);
    if manifest.raw_included {
        eprintln!("warning: {}", backup::raw_warning(&manifest.raw_periods));
    } else {
        println!(
            "Raw data left out (the default): a restore of this backup marks the periods of {} that have ended by then as purged, so nothing more is released from them; a period still running counts again from zero. See docs/backup.md.",
            if manifest.raw_periods.is_empty() {
                "none".to_string()
            } else {
                manifest.raw_periods.join(", ")
            }
        );
    }
    Ok(())
}

/// Asks the running server at `url` to write a backup to `to` on its machine
/// (POST /api/v1/admin/backup), and reads the manifest it wrote.
fn ask_server(
    url: &str,
    to: &std::path::Path,
    include_raw: bool,
    token_file: &std::path::Path,
) -> anyhow::Result<tellestrek::backup::Manifest> {
    let token = std::fs::read_to_string(token_file).with_context(|| {
        format!(
            "a running server takes the copy itself and needs an admin token, read from {} (--admin-token-file FILE)",
            token_file.display()
        )
    })?;
    let endpoint = format!("{}/api/v1/admin/backup", url.trim_end_matches('/'));
    let body = serde_json::json!({"to": to.display().to_string(), "include_raw": include_raw});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (status, answer): (_, serde_json::Value) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&endpoint)
            .bearer_auth(token.trim())
            .json(&body)
            .send()
            .await
            .with_context(|| format!("asking the running server at {url} (--url) for a backup"))?;
        let status = resp.status();
        let answer = resp.json().await.unwrap_or(serde_json::Value::Null);
        anyhow::Ok((status, answer))
    })?;
    if status != reqwest::StatusCode::CREATED {
        anyhow::bail!(
            "the running server at {url} refused the backup ({status}): {}",
            answer["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    println!(
        "The running server at {url} wrote a backup to {} (on its machine).",
        to.display()
    );
    tellestrek::backup::read_manifest(to)
        .with_context(|| format!("reading the manifest the server wrote to {}", to.display()))
}

/// `tellestrek restore`.
fn restore(
    from: &std::path::Path,
    data: &std::path::Path,
    force: bool,
    today: time::Date,
    no_release_since: bool,
) -> anyhow::Result<()> {
    let done = tellestrek::backup::restore(from, data, force, today, no_release_since)
        .with_context(|| format!("restoring {} into {}", from.display(), data.display()))?;
    println!(
        "Restored {} ({}, format {}) into {}: every file matched the manifest.",
        from.display(),
        done.manifest.tool,
        done.manifest.format,
        data.display()
    );
    if !done.marked_purged.is_empty() {
        let names: Vec<String> = done.marked_purged.iter().map(|p| p.to_string()).collect();
        println!(
            "The backup held no raw data: the periods {} are marked purged, and their releases still to draw are never drawn.",
            names.join(", ")
        );
    }
    println!("Server key: {}", done.manifest.server_key);
    Ok(())
}

/// What `policy` would do to the regimes of data directory `dir` at a start today; reads only
/// the plain regime file, so it works while the server runs.
fn policy_against(dir: &std::path::Path, policy: &Policy) -> anyhow::Result<String> {
    use tellestrek::regime::{self, Regimes};
    let today = clock::from_env().map_err(anyhow::Error::msg)?.today();
    let current = tellestrek::domain::Period::containing(policy.granularity, today);
    let stored = tellestrek::store::read_regimes(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|b| Regimes::from_bytes(&b))
        .transpose()?;
    if stored.is_none() && dir.join("db").exists() {
        anyhow::bail!(
            "{} has no {}: it was written by an older version; start the server once to adopt it",
            dir.display(),
            tellestrek::store::REGIMES_FILE
        );
    }
    let plan = regime::plan(stored.as_ref(), policy, &policy.text, current)?;
    let mut out = plan.describe();
    if let Some(s) = &stored {
        out.push_str("Policies this data directory holds:\n");
        for r in s.all() {
            out.push_str(&format!("  from {}: {}\n", r.from, r.policy.source));
        }
    }
    Ok(out)
}

/// The file the first admin token goes to by default: beside the data directory, not in it,
/// so that no copy or backup of the data directory carries a token in clear text.
fn default_token_file(data: &std::path::Path) -> PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "tellestrek-data".into());
    name.push(".admin-token");
    data.with_file_name(name)
}

/// The name of the server key among systemd's credentials (`LoadCredential=server-key:PATH`).
const KEY_CREDENTIAL: &str = "server-key";

/// Raises the soft limit of open files to 4096 (or the hard limit, if lower), so connections
/// up to `server::MAX_CONNECTIONS` leave descriptors for the store; a failure leaves the limit.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    const WANT: u64 = 4096;
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|c| c < WANT.min(hard)) {
        limit.current = Some(WANT.min(hard));
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Reads the server key: the given file, else systemd's credential if there is one, else none
/// (the data directory keeps its own).
fn read_key_file(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            // Under systemd's credentials, a missing key is a mistake in the unit, not a wish to
            // keep the key in the data directory.
            Some(d) => {
                let path = std::path::Path::new(&d).join(KEY_CREDENTIAL);
                anyhow::ensure!(
                    path.exists(),
                    "$CREDENTIALS_DIRECTORY is set but holds no `{KEY_CREDENTIAL}`; add LoadCredential={KEY_CREDENTIAL}:/path/to/key to the unit (or pass --key-file)"
                );
                path
            }
            None => return Ok(None),
        },
    };
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the key file {}; create one with: head -c 32 /dev/urandom > {0}; chmod 600 {0}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        bytes.len() == tellestrek::auth::SECRET_LEN,
        "the key file {} holds {} bytes; it must hold exactly {} random bytes (head -c 32 /dev/urandom)",
        path.display(),
        bytes.len(),
        tellestrek::auth::SECRET_LEN
    );
    Ok(Some(bytes))
}

/// Writes a secret to a new file readable by this user only; never over an existing file.
fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    Ok(())
}

/// `tellestrek verify`: exits 0 if verified, 1 if the file does not match its signature, and
/// 2 (after a message) if the key or signature given is malformed, so a script can tell a
/// typing mistake from a changed file.
fn verify(
    export: &std::path::Path,
    public_key: Option<&str>,
    signature: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use tellestrek::service::{VerifyError, verify_detached, verify_export};
    let malformed = |e: &VerifyError| -> ! {
        eprintln!("error: {}: NOT CHECKED: {e}", export.display());
        std::process::exit(2)
    };
    let checked = match signature {
        Some(sig_path) => {
            let Some(key) = public_key else {
                eprintln!(
                    "error: pass --public-key (from GET /api/v1/signing-key): a detached signature names no key"
                );
                std::process::exit(2)
            };
            let bytes =
                std::fs::read(export).with_context(|| format!("reading {}", export.display()))?;
            let sig = std::fs::read_to_string(sig_path)
                .with_context(|| format!("reading {}", sig_path.display()))?;
            verify_detached(&bytes, &sig, key).map(|()| {
                format!(
                    "OK: {} ({} bytes) is signed by {key}.",
                    export.display(),
                    bytes.len()
                )
            })
        }
        None => {
            let text = std::fs::read_to_string(export)
                .with_context(|| format!("reading {}", export.display()))?;
            verify_export(&text, public_key).map(|n| {
                format!(
                    "OK: {} holds {n} releases signed by {}.",
                    export.display(),
                    public_key.unwrap_or("the key named in the file")
                )
            })
        }
    };
    match checked {
        Ok(line) => {
            println!("{line}");
            if public_key.is_none() {
                println!(
                    "Pass --public-key (from GET /api/v1/signing-key) to check who signed it, not only that it is intact."
                );
            }
            Ok(())
        }
        Err(e) if e.is_malformed_input() => malformed(&e),
        Err(e) => anyhow::bail!("{}: NOT VERIFIED: {e}", export.display()),
    }
}

/// Where `serve` exposes `/metrics`, as the options asked.
enum MetricsChoice {
    /// No metrics (`/metrics` is a 404).
    Off,
    /// On an address of their own, without a token.
    Listen(SocketAddr),
    /// On the main address, behind this token.
    Token(tellestrek::metrics::MetricsToken),
}

/// The startup line: what runs where. Names the policy file and its fingerprint, the data
/// directory, the listen address, where `/metrics` is, and the log level and format; never a
/// token, key or secret (the metrics token is only said to exist).
fn startup_line(
    policy: &Policy,
    data: &std::path::Path,
    addr: SocketAddr,
    metrics: &str,
    log: &str,
) -> String {
    format!(
        "Tellestrek listening on http://{addr} (data: {}, policy: {}, policy fingerprint: {}, metrics: {metrics}, log: {log})",
        data.display(),
        policy.source,
        tellestrek::auth::text_fingerprint(&policy.text),
    )
}

fn serve(
    data: PathBuf,
    policy: Policy,
    listen: SocketAddr,
    fresh: &mut FreshDir,
    token_file: &std::path::Path,
    key: Option<Vec<u8>>,
    (metrics, log_format): (MetricsChoice, tellestrek::logging::LogFormat),
) -> anyhow::Result<()> {
    let clock: Arc<dyn clock::Clock> = Arc::from(clock::from_env().map_err(anyhow::Error::msg)?);
    let admin = std::env::var("TELLESTREK_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = rt.block_on(async move {
        // Signal handlers first, so a SIGTERM right after the banner shuts down gracefully;
        // then the address, so a port in use fails before anything is written.
        let shutdown = server::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let metrics = match metrics {
            MetricsChoice::Off => server::MetricsServe::Off,
            MetricsChoice::Token(t) => server::MetricsServe::Bearer(t),
            MetricsChoice::Listen(a) => server::MetricsServe::Separate(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the metrics address {a}"))?,
            ),
        };
        let (svc, created) =
            Service::open_with_key(&data, policy, clock, admin.as_deref(), key.as_deref())
                .with_context(|| format!("opening data directory {}", data.display()))?;
        if let Some(token) = created {
            if admin.is_some() {
                println!("Created the admin token from TELLESTREK_ADMIN_TOKEN.");
            } else {
                // Never to standard output or the log (the journal keeps both): to a 0600 file.
                write_secret_file(token_file, token.expose()).with_context(|| {
                    format!(
                        "the admin token was created but could not be written; stop the server and run: tellestrek admin-token --data {} --out FILE",
                        data.display()
                    )
                })?;
                println!(
                    "Created the first admin token in {} (mode 0600). Read it, keep it somewhere safe, then delete the file.",
                    token_file.display()
                );
            }
        }
        fresh.keep();
        println!(
            "Server key: {}",
            if key.is_some() {
                "from the key file, kept outside the data directory"
            } else {
                "kept in the data directory (use --key-file to keep it apart)"
            }
        );
        println!("Policy: {}", svc.policy_change().trim_end());
        let level = std::env::var(tellestrek::logging::LOG_ENV)
            .ok()
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| "info".into());
        let log = format!("level {level}, format {}", log_format.as_str());
        let exposed = metrics.describe(addr);
        let line = startup_line(svc.policy(), &data, addr, &exposed, &log);
        // Standard output has it for a person (and the journal); a JSON log gets it too, with
        // its parts as fields, for a collector that reads standard error only. In text format
        // it is not logged twice.
        if log_format == tellestrek::logging::LogFormat::Json {
            tracing::info!(
                policy = %svc.policy().source,
                policy_fingerprint = %tellestrek::auth::text_fingerprint(&svc.policy().text),
                data = %data.display(),
                listen = %addr,
                metrics = %exposed,
                log_level = %level,
                "{line}"
            );
        }
        println!("{line}");
        server::run_with(listener, svc, shutdown, metrics)
            .await
            .context("serving")
    });
    // Blocking work still running (a release being drawn) gets a bounded wait, so the process
    // exits within the 10 s promised after SIGTERM.
    rt.shutdown_timeout(server::RUNTIME_SHUTDOWN);
    served
}

/// Writes the demo's env file readable by its owner only (it holds the demo's tokens), never
/// over an existing file: a stale file from an earlier demo would hold dead tokens.
fn write_env_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "--env-file {} exists and is never overwritten; remove it or choose another name",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    };
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The address to print for `addr`: a wildcard listener is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

fn demo(
    listen: SocketAddr,
    data: Option<PathBuf>,
    env_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let now = match std::env::var(clock::NOW_ENV) {
        Ok(v) if !v.trim().is_empty() => clock::FixedClock::parse(&v)
            .map_err(anyhow::Error::msg)?
            .now(),
        _ => time::OffsetDateTime::now_utc(),
    };
    // A temporary directory is removed when the demo ends; --data keeps it.
    let (dir, _guard) = match data {
        Some(d) => {
            anyhow::ensure!(
                !d.exists(),
                "{} exists; the demo needs a fresh directory",
                d.display()
            );
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("tellestrek-demo-")
                .tempdir()
                .context("creating a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    if let Some(f) = &env_file {
        anyhow::ensure!(
            !f.exists(),
            "--env-file {} exists and is never overwritten; remove it or choose another name",
            f.display()
        );
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = server::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        println!("Building the demo: {} months of simulated contacts, released with OpenDP noise...", tellestrek::demo::HISTORY_MONTHS);
        let demo = tellestrek::demo::build(&dir, now, std::sync::Arc::new(tellestrek::dp::OpenDpNoise)).await.context("building the demo")?;
        println!("Data directory: {}  ({} releases drawn, {} periods purged of raw data)\n", dir.display(), demo.report.drawn.len(), demo.report.purged.len());
        println!("Released contacts per unit and quarter, Helse Vestfjord HF (noisy estimates):");
        println!("{}", tellestrek::demo::unit_table(&demo.svc, "helse-vestfjord")?);
        let findings = tellestrek::demo::story(&demo.svc)?;
        println!("{}", tellestrek::demo::render(demo.svc.policy(), &findings));
        println!("{}", tellestrek::demo::privacy_summary(&demo.svc)?);
        println!("Tokens, one per role (use as `Authorization: Bearer TOKEN`):");
        for (role, org, token) in &demo.tokens {
            let scope = org.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
            println!("  {:<30} {token}", format!("{role}{scope}"));
        }
        let url = format!("http://{}", reachable(addr));
        let bin_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(std::path::Path::to_path_buf));
        let mut exports = tellestrek::demo::env_lines(&demo, &url, bin_dir.as_deref())?;
        let links = tellestrek::demo::sign_in_links(&demo, &url)?;
        println!("\nSign-in links for the web pages, one per role (each works once, in one browser):");
        for (_, role, link) in &links {
            println!("  {role:<30} {link}");
        }
        exports.push_str(&tellestrek::demo::sign_in_env_lines(&links));
        let env_path = env_file.unwrap_or_else(|| dir.join("demo.env"));
        write_env_file(&env_path, &exports)?;
        let shown = env_path.display().to_string().replace('\'', r"'\''");
        println!("\nThe README's walk-through uses these variables (written to {}):\n", env_path.display());
        print!("{exports}");
        println!("\nIn another terminal:  source '{shown}'");
        println!("then, for example:    curl -fsS -H \"Authorization: Bearer $RESEARCHER\" \"$TELLESTREK_URL/api/v1/budget\"\n");
        println!("Tellestrek demo listening on http://{addr} (Ctrl-C to stop)");
        server::run(listener, demo.svc, shutdown).await.context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_port_alone_listens_on_loopback() {
        assert_eq!(
            parse_listen("8080"),
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))
        );
    }

    #[test]
    fn a_colon_and_port_listens_on_loopback() {
        assert_eq!(
            parse_listen(":8080"),
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))
        );
    }

    #[test]
    fn an_ipv4_address_and_port_is_taken_as_written() {
        assert_eq!(
            parse_listen("127.0.0.1:8080"),
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))
        );
        assert_eq!(
            parse_listen("0.0.0.0:80"),
            Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 80)))
        );
    }

    #[test]
    fn an_ipv6_address_in_brackets_and_port_is_taken_as_written() {
        assert_eq!(
            parse_listen("[::1]:8080"),
            Ok(SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)))
        );
    }

    #[test]
    fn a_host_name_is_resolved() {
        let a = parse_listen("localhost:8080").unwrap();
        assert_eq!(a.port(), 8080);
        assert!(a.ip().is_loopback(), "{a}");
        assert!(matches!(a.ip(), IpAddr::V4(_) | IpAddr::V6(_)));
    }

    #[test]
    fn bad_addresses_are_refused_with_the_accepted_forms() {
        for bad in ["", ":", "localhost", "1.2.3.4", "[::1]"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
        let e = parse_listen("70000").unwrap_err();
        assert!(e.contains("0 to 65535"), "{e}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
