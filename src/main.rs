//! The registryx-guard binary: install the crypto provider, parse the command line, run.
//! Everything else lives in the library so that tests drive the same code.

use std::process::ExitCode;

use clap::Parser;
use registryx_guard::cli::Cli;
use registryx_guard::telemetry::LogWriter;

// Why mimalloc rather than the system allocator: see its entry in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    registryx_guard::tls::install_crypto_provider();
    let cli = Cli::parse();
    let writer = match cli.command {
        registryx_guard::cli::Command::Serve(_) => LogWriter::Background,
        _ => LogWriter::Direct,
    };
    // Held to the end of main: dropping it flushes the log lines still queued.
    let _log_guard = registryx_guard::telemetry::init(&cli.log, writer);
    match registryx_guard::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(registryx_guard::cli::EXIT_USAGE)
        }
    }
}
