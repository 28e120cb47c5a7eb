//! The log filter: the operator's verbosity reaches this crate only.
//!
//! `TELLESTREK_LOG=debug` (or `trace`) must never switch on a dependency's debug output: sled's
//! trace log prints keys and values (raw cells, pseudonyms, secrets), and hyper's and tower's
//! would print every request's arrival, which for the tick route is the moment a contact was
//! logged. So a bare level in the operator's filter applies to `tellestrek` alone, and every
//! other crate stays at `warn`. A directive may make another crate quieter (`sled=off`,
//! `hyper=error`) but never louder than `warn`: `sled=debug`, a bare target (`sled`, which
//! means `trace`) or any span filter (`[tick]=trace`, `tellestrek[job]=trace`: a span filter
//! enables every event inside the span, whatever crate it comes from) is refused at start
//! with a message that names it, at every setting and on every system, test systems
//! included.
//!
//! The format is human-readable text by default, without colour codes unless standard error is
//! a terminal (the journal and log files get plain text), or one JSON object per line with
//! `--log-format json` / `TELLESTREK_LOG_FORMAT=json` (tracing-subscriber's JSON layer), for a
//! log collector.
//!
//! Nothing in this crate logs per tick, at any level: no line can then carry a tick's time. The
//! store logs a change of its health (able to write, or not) once, not per request.

use tracing_subscriber::EnvFilter;

/// The environment variable with the operator's filter.
pub const LOG_ENV: &str = "TELLESTREK_LOG";

/// The environment variable that chooses the log format (`human` or `json`).
pub const LOG_FORMAT_ENV: &str = "TELLESTREK_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Text for a person: time, level, target, message and fields (the default).
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for a collector.
    Json,
}

impl LogFormat {
    /// Parses `human` or `json` (any case); the error names the accepted values.
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format; use human or json")),
        }
    }

    /// The name, as the option takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the process's log subscriber: to standard error, with `filter`, in `format`;
/// colour only when standard error is a terminal.
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
        // JSON never carries colour codes; spans are not logged (none carries anything the
        // event does not), so each line is one self-contained event.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Level for everything that is not named: dependencies say only what is wrong.
const DEPENDENCY_LEVEL: &str = "warn";

/// This crate's target (the library and the binary share it).
const OWN_TARGET: &str = "tellestrek";

/// The levels `tracing` knows, which a bare directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The levels another crate may be set to: quieter than or as quiet as its default.
const DEPENDENCY_LEVELS: [&str; 3] = ["off", "error", "warn"];

/// Turns the operator's filter into the one in force: each bare level (`debug`) becomes
/// `tellestrek=debug`; directives for this crate (`tellestrek::store=trace`) and directives
/// that quiet another crate (`sled=off`) are kept as written; dependencies default to `warn`,
/// this crate to `info`. A directive that would make another crate log more than `warn` is
/// refused: the error names it.
pub fn filter_directives(spec: Option<&str>) -> Result<String, String> {
    let mut out = vec![DEPENDENCY_LEVEL.to_string(), format!("{OWN_TARGET}=info")];
    for d in spec
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let lower = d.to_ascii_lowercase();
        if LEVELS.contains(&lower.as_str()) {
            out.push(format!("{OWN_TARGET}={lower}"));
            continue;
        }
        // A span filter (`tellestrek[job]=trace`) enables every event inside a matching span,
        // whatever crate the event comes from: refused, like any other way to reach past
        // this crate. The target is what comes before `=`.
        if d.contains(['[', ']', '{', '}']) {
            return Err(format!(
                "{LOG_ENV}: `{d}` is a span filter, which would let other crates log inside the \
                 span; the log filter reaches tellestrek only (write a level such as `debug`, \
                 or `tellestrek::store=trace`)"
            ));
        }
        let target = d.split('=').next().unwrap_or_default().trim();
        let ours = target == OWN_TARGET || target.starts_with(&format!("{OWN_TARGET}::"));
        let level = d
            .rsplit_once('=')
            .map(|(_, l)| l.trim().to_ascii_lowercase());
        let quieter = !target.is_empty()
            && level
                .as_deref()
                .is_some_and(|l| DEPENDENCY_LEVELS.contains(&l));
        if !(ours || quieter) {
            return Err(format!(
                "{LOG_ENV}: `{d}` would let {} log above warn; the log filter reaches \
                 tellestrek only (write a level such as `debug`, or `tellestrek::store=trace`), \
                 because other crates' debug output can print raw cells, keys and the moment \
                 of a tick; another crate can only be made quieter (`sled=off`)",
                if target.is_empty() {
                    "every crate".to_string()
                } else {
                    format!("`{target}`")
                }
            ));
        }
        out.push(d.to_string());
    }
    Ok(out.join(","))
}

/// The filter in force for the given operator setting; an unparsable setting, or one that
/// would make a dependency log above `warn`, is an error that names it, so a typo never
/// silently changes what is logged.
pub fn filter(spec: Option<&str>) -> Result<EnvFilter, String> {
    let directives = filter_directives(spec)?;
    EnvFilter::builder().parse(&directives).map_err(|e| {
        format!(
            "{LOG_ENV}: `{}` is not a log filter: {e}",
            spec.unwrap_or("")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_reaches_this_crate_only() {
        assert_eq!(
            filter_directives(Some("trace")).unwrap(),
            "warn,tellestrek=info,tellestrek=trace"
        );
        assert_eq!(filter_directives(None).unwrap(), "warn,tellestrek=info");
        assert_eq!(
            filter_directives(Some("DEBUG, sled=off, hyper=Error, tower=warn")).unwrap(),
            "warn,tellestrek=info,tellestrek=debug,sled=off,hyper=Error,tower=warn"
        );
        assert_eq!(
            filter_directives(Some("tellestrek::store=trace,tellestrek::dp=debug")).unwrap(),
            "warn,tellestrek=info,tellestrek::store=trace,tellestrek::dp=debug"
        );
        assert!(filter(Some("trace")).is_ok());
        assert!(filter(Some("tellestrek=[")).is_err());
    }

    #[test]
    fn no_setting_makes_another_crate_log_above_warn() {
        for spec in [
            "sled=debug",
            "sled=info",
            "sled",
            "hyper=TRACE",
            "debug,tower_http=debug",
            "[tick]=trace",
            "[{count}]=debug",
            "=debug",
            "tellestrekx=debug",
            "sled=",
            "tellestrek[lifecycle]=trace",
            "tellestrek[{period}]=debug",
        ] {
            let e = filter(Some(spec)).expect_err(spec);
            assert!(e.starts_with("TELLESTREK_LOG: `"), "{spec}: {e}");
            assert!(e.contains("tellestrek only"), "{spec}: {e}");
        }
    }

    #[test]
    fn the_log_format_is_human_or_json() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("human"), Ok(LogFormat::Human));
        assert!(
            LogFormat::parse("xml")
                .unwrap_err()
                .contains("human or json")
        );
    }
}
