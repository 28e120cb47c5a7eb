//! Fault-injection points for the crash tests: `TELLESTREK_TEST_ABORT_AT=NAME` makes the process
//! abort (as `kill -9` would end it) when it reaches the point called `NAME`, after a short
//! pause in which readers may look at what is visible then. Unset, a point costs one lookup of
//! an environment variable, and only the lifecycle job passes any. Never set it in production.

/// The environment variable naming the point to abort at.
pub const ABORT_AT_ENV: &str = "TELLESTREK_TEST_ABORT_AT";

/// How long the process stands at the point before it aborts: long enough for a test's reader
/// to ask what is served at that instant.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(700);

/// Every point, in the order the lifecycle job passes them.
pub const POINTS: [&str; 7] = [
    "lifecycle:closed",
    "release:drawn",
    "release:staged",
    "release:published",
    "lifecycle:released",
    "purge:deleted",
    "lifecycle:done",
];

/// Aborts here if the test asked for this point.
pub fn point(name: &str) {
    if std::env::var(ABORT_AT_ENV).is_ok_and(|at| at == name) {
        std::thread::sleep(PAUSE);
        std::process::abort();
    }
}
