//! Structured logging: human-readable text by default, one JSON object per line with `--log-format json`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging flags, shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "RXG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `registryx_guard=debug,kube=warn`.
    #[arg(long, env = "RXG_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

/// Installs the global subscriber. Logs go to stderr so that `verify --output json` keeps stdout clean.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|error| {
        eprintln!(
            "warning: invalid --log-level {:?} ({error}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` so that a second call (in tests) is harmless.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
