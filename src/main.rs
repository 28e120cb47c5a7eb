//! The `tellestrek` binary: a thin command-line shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tellestrek::clock;
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
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let policy = load_policy(file.as_ref())?;
            print!("{}", tellestrek::plan::describe(&policy));
            Ok(())
        }
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
