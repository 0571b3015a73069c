//! `aigw discord register-commands`: puts `/ask`, `/budget`, `/transcript`, `/recap`, `/listen`
//! and `/stop` into the application through Discord's bulk overwrite (`PUT`), in one guild or
//! globally, with the bot token from the env var `discord.bot_token_env` names. Exit status: 0 when
//! Discord took them, 1 when the call failed, 2 for a configuration or usage error.

#![allow(
    clippy::print_stdout,
    reason = "the command line reports results on stdout"
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::api::DiscordApi;
use super::config::is_snowflake;
use super::interaction::definitions;
use crate::config::Config;

/// The `aigw discord` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DiscordCommand {
    /// Register the slash commands with Discord, replacing the application's existing ones
    /// (in a guild: at once; globally: every guild the bot is in). Uses the bot token from the
    /// env var named by `discord.bot_token_env`.
    RegisterCommands {
        /// The config file with the `[discord]` section.
        #[arg(long, env = "AIGW_CONFIG")]
        config: PathBuf,
        /// Register in this guild (overrides `discord.guild_id`).
        #[arg(long, conflicts_with = "global")]
        guild: Option<String>,
        /// Register globally even when `discord.guild_id` is set.
        #[arg(long)]
        global: bool,
    },
}

/// Runs a `discord` subcommand.
pub fn run(cmd: DiscordCommand) -> ExitCode {
    match cmd {
        DiscordCommand::RegisterCommands {
            config,
            guild,
            global,
        } => register(&config, guild, global),
    }
}

fn register(path: &Path, guild: Option<String>, global: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let Some(discord) = config.discord else {
        eprintln!("error: {} has no [discord] section", path.display());
        return ExitCode::from(2);
    };
    let guild = if global {
        None
    } else {
        guild.or_else(|| discord.guild_id.clone())
    };
    if let Some(g) = &guild
        && !is_snowflake(g)
    {
        eprintln!("error: --guild must be a guild's id (digits), not '{g}'");
        return ExitCode::from(2);
    }
    let token = match std::env::var(&discord.bot_token_env) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            eprintln!(
                "error: the bot token is not set: put it in the environment variable {} (discord.bot_token_env)",
                discord.bot_token_env
            );
            return ExitCode::from(2);
        }
    };
    let api = match DiscordApi::new(&discord) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(api.overwrite_commands(&token, guild.as_deref(), &definitions()));
    match result {
        Ok(registered) => {
            let scope = match &guild {
                Some(g) => format!("in guild {g}"),
                None => "globally".into(),
            };
            let names: Vec<String> = registered
                .as_array()
                .map(|cmds| cmds.iter().map(describe).collect())
                .unwrap_or_default();
            println!(
                "registered {} commands {scope} for application {}: {}",
                names.len(),
                discord.application_id,
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `/name (id)` of a registered command.
fn describe(command: &Value) -> String {
    let name = command["name"].as_str().unwrap_or("?");
    match command["id"].as_str() {
        Some(id) => format!("/{name} ({id})"),
        None => format!("/{name}"),
    }
}
