//! Structured logging: human-readable text by default, one JSON object per line with `--log-format json`.

use std::fmt;

use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields whose value is JSON text (the admission decisions): the JSON format writes them as the
/// objects they are, so that a log pipeline reads `decisions[0].verdict.policies` without parsing a
/// string inside the line.
pub const JSON_FIELDS: &[&str] = &["decisions"];

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

/// Where log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogWriter {
    /// On the calling thread: short-lived commands, whose lines must interleave with their output.
    Direct,
    /// By a thread of its own (`serve`): a review's thread hands its line over and goes on, instead of
    /// waiting for stderr (a pipe to the container runtime that can be slow). Lossless: when 4,096 lines
    /// are waiting, the next one waits for room rather than dropping a decision.
    Background,
}

/// Installs the global subscriber. Logs go to stderr so that `verify --output json` keeps stdout clean.
/// With [`LogWriter::Background`], keep the returned guard until the process ends: dropping it flushes
/// the lines still queued.
pub fn init(
    args: &LogArgs,
    writer: LogWriter,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|error| {
        eprintln!(
            "warning: invalid --log-level {:?} ({error}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    let (make_writer, guard) = match writer {
        LogWriter::Direct => (BoxMakeWriter::new(std::io::stderr), None),
        LogWriter::Background => {
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                // A decision line can be 16 KiB: 4,096 queued lines are at most 64 MiB, the default
                // 128k could be 2 GiB behind a stalled stderr before anyone waits.
                .buffered_lines_limit(4096)
                .thread_name("registryx-guard-log")
                .finish(std::io::stderr());
            (BoxMakeWriter::new(writer), Some(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(make_writer);
    // `try_init` so that a second call (in tests) is harmless.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
    };
    guard
}

/// Colour codes only for a person at a terminal: a log file, a pipe or `kubectl logs` would show them
/// as `[2m...[0m`. A non-empty `NO_COLOR` turns them off everywhere (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// tracing-subscriber's JSON lines (timestamp, level, the event's fields at the top, target, the
/// current span and every span), except that [`JSON_FIELDS`] are embedded as JSON values.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        if SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            line.insert("timestamp".into(), timestamp.into());
        }
        line.insert("level".into(), event.metadata().level().as_str().into());
        event.record(&mut JsonVisitor(&mut line));
        line.insert("target".into(), event.metadata().target().into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    // With JsonFields, a span's recorded fields are one JSON object's text.
                    let mut fields: Map<String, Value> = span
                        .extensions()
                        .get::<FormattedFields<N>>()
                        .and_then(|fields| serde_json::from_str(fields.as_str()).ok())
                        .unwrap_or_default();
                    fields.insert("name".into(), span.name().into());
                    Value::Object(fields)
                })
                .collect();
            if let Some(current) = spans.last() {
                line.insert("span".into(), current.clone());
            }
            line.insert("spans".into(), Value::Array(spans));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn text(&mut self, field: &Field, text: String) {
        let value = if JSON_FIELDS.contains(&field.name()) {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        self.0.insert(field.name().to_owned(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}
