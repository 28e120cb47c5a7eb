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
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on a data directory.
    Serve {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./tellestrek-data", env = "TELLESTREK_DATA")]
        data: PathBuf,
        /// Policy file; default the built-in policy/default.toml.
        #[arg(long, env = "TELLESTREK_POLICY")]
        policy: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "TELLESTREK_LISTEN")]
        listen: SocketAddr,
    },
    /// Start a demo: a fresh data directory with 20 months of simulated, released history,
    /// and a token for each role.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Keep the demo data in this directory (must not exist yet) instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Verify a saved signed export offline: a JSON export, or a CSV export with its detached
    /// signature (--signature). Exit 1 if it was changed, 2 if the key or signature is malformed.
    Verify {
        /// The export file, as saved from GET /api/v1/releases.
        export: PathBuf,
        /// The public key (base64url) to trust, from GET /api/v1/signing-key; default the key
        /// named in a JSON file, which proves only that the file is intact. Required with
        /// --signature.
        #[arg(long)]
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
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy and print its plan; exit 1 on error.
    Check {
        /// Policy file; default the built-in policy.
        file: Option<PathBuf>,
    },
}

fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    Ok(match path {
        Some(p) => Policy::from_path(p)?,
        None => Policy::builtin(),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TELLESTREK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        } => {
            let policy = load_policy(policy.as_ref())?;
            serve(data, policy, listen)
        }
        Command::Demo { listen, data } => demo(listen, data),
        Command::Verify {
            export,
            public_key,
            signature,
        } => verify(&export, public_key.as_deref(), signature.as_deref()),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let policy = load_policy(file.as_ref())?;
            print!("{}", tellestrek::plan::describe(&policy)?);
            Ok(())
        }
    }
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

fn serve(data: PathBuf, policy: Policy, listen: SocketAddr) -> anyhow::Result<()> {
    let clock: Arc<dyn clock::Clock> = Arc::from(clock::from_env().map_err(anyhow::Error::msg)?);
    let admin = std::env::var("TELLESTREK_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let (svc, created) = Service::open(&data, policy, clock, admin.as_deref())
        .with_context(|| format!("opening data directory {}", data.display()))?;
    if let Some(token) = created {
        if admin.is_some() {
            println!("Created the admin token from TELLESTREK_ADMIN_TOKEN.");
        } else {
            println!(
                "Created the admin token. It is shown only this once; store it now:\n\n    {}\n",
                token.expose()
            );
        }
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        println!(
            "Tellestrek listening on http://{addr} (data: {}, policy: {})",
            data.display(),
            svc.policy().source
        );
        server::run(listener, svc, server::shutdown_signal())
            .await
            .context("serving")
    })
}

fn demo(listen: SocketAddr, data: Option<PathBuf>) -> anyhow::Result<()> {
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
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        println!("Building the demo: {} months of simulated contacts, released with OpenDP noise...", tellestrek::demo::HISTORY_MONTHS);
        let demo = tellestrek::demo::build(&dir, now, std::sync::Arc::new(tellestrek::dp::OpenDpNoise)).await.context("building the demo")?;
        println!("Data directory: {}  ({} releases drawn, {} periods purged of raw data)\n", dir.display(), demo.report.drawn.len(), demo.report.purged.len());
        println!("Released contacts per unit and quarter, Helse Vestfjord HF (noisy estimates):");
        println!("{}", tellestrek::demo::unit_table(&demo.svc, "helse-vestfjord")?);
        println!("The spike: {} after a serious event {} months ago. No uptake: {}.\n", tellestrek::demo::SPIKE_UNIT.1, tellestrek::demo::SPIKE_MONTHS_AGO, tellestrek::demo::SILENT_UNIT.1);
        println!("Tokens, one per role (use as `Authorization: Bearer TOKEN`):");
        for (role, org, token) in &demo.tokens {
            let scope = org.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
            println!("  {:<30} {token}", format!("{role}{scope}"));
        }
        let researcher = demo.tokens.iter().find(|t| t.0 == "researcher").map(|t| t.2.clone()).unwrap_or_default();
        println!("\nTry:\n  curl -H 'Authorization: Bearer {researcher}' 'http://{addr}/api/v1/releases?marginal=unit&org=helse-vestfjord'");
        println!("  curl -H 'Authorization: Bearer {researcher}' 'http://{addr}/api/v1/releases?format=csv' -o releases.csv");
        println!("  curl -H 'Authorization: Bearer {researcher}' http://{addr}/api/v1/budget\n");
        println!("Tellestrek demo listening on http://{addr} (Ctrl-C to stop)");
        server::run(listener, demo.svc, server::shutdown_signal()).await.context("serving")
    })
}
