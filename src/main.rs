//! The registryx-guard binary: install the crypto provider, parse the command line, run.
//! Everything else lives in the library so that tests drive the same code.

use std::process::ExitCode;

use clap::Parser;
use registryx_guard::cli::Cli;

fn main() -> ExitCode {
    registryx_guard::tls::install_crypto_provider();
    let cli = Cli::parse();
    registryx_guard::telemetry::init(&cli.log);
    match registryx_guard::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(registryx_guard::cli::EXIT_USAGE)
        }
    }
}
