//! `aigw-openapi write` regenerates `openapi/openapi.json`; `aigw-openapi check` fails when
//! the committed document differs from the generated one.

use std::process::ExitCode;

fn main() -> ExitCode {
    let path = aigw_openapi::committed_path();
    let generated = aigw_openapi::generated();
    match std::env::args().nth(1).as_deref() {
        Some("write") => match std::fs::write(&path, generated) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Some("check") => {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed == generated {
                eprintln!("{} is up to date", path.display());
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} is out of date: run `cargo run -p aigw-openapi -- write`",
                    path.display()
                );
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: aigw-openapi write|check");
            ExitCode::from(2)
        }
    }
}
