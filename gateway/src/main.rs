//! The `aigw` command: `serve`, `config check`, `models …` and `discord …`.

#![allow(
    clippy::print_stdout,
    reason = "the command line reports results on stdout"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use aigw_gateway::config::Config;
use aigw_gateway::startup::{check_serve_policy, load_config};
use aigw_gateway::state::AppState;
use aigw_gateway::telemetry::{LogFormat, init_tracing};
use aigw_gateway::{config, server};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aigw",
    version,
    about = "OpenAI-compatible AI inference and audio gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// TOML config file; without one, the embedded default is served.
        #[arg(long, env = "AIGW_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding the config (default 127.0.0.1:8080).
        #[arg(long, env = "AIGW_LISTEN")]
        listen: Option<String>,
        /// Serve without API keys on a non-loopback address.
        #[arg(long, env = "AIGW_ALLOW_UNAUTHENTICATED")]
        allow_unauthenticated: bool,
        /// Log line format.
        #[arg(long, env = "AIGW_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Model weights: fetch them into the model directory, list what is installed.
    Models {
        #[command(subcommand)]
        command: aigw_gateway::models_cli::ModelsCommand,
    },
    /// The Discord integration: register its slash commands.
    Discord {
        #[command(subcommand)]
        command: aigw_gateway::discord::cli::DiscordCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; exits non-zero with the offending key's path.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            allow_unauthenticated,
            log_format,
        } => {
            init_tracing(log_format);
            serve(config, listen, allow_unauthenticated)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Models { command } => aigw_gateway::models_cli::run(command),
        Command::Discord { command } => aigw_gateway::discord::cli::run(command),
    }
}

fn serve(config: Option<PathBuf>, listen: Option<String>, allow_unauthenticated: bool) -> ExitCode {
    let config = match load_config(config.as_deref(), listen.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_serve_policy(&config, allow_unauthenticated) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen;
    if config.keys.is_empty() {
        if addr.ip().is_loopback() {
            tracing::info!("no API keys configured: serving unauthenticated on loopback");
        } else {
            tracing::warn!(%addr, "no API keys configured: serving UNAUTHENTICATED on a non-loopback address (--allow-unauthenticated)");
        }
    }
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, models = state.routes().list(&aigw_gateway::auth::Principal::anonymous()).data.len(), "listening");
    server::run(listener, state, server::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn check(file: &std::path::Path) -> ExitCode {
    match config::Config::load(file) {
        Ok(c) => {
            for var in &c.missing_env {
                eprintln!("warning: environment variable {var} is referenced but not set here");
            }
            println!(
                "{}: ok ({} providers, {} models, {} API keys)",
                file.display(),
                c.providers.len(),
                c.models.len(),
                c.keys.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}
