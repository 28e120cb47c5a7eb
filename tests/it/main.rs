//! The integration test binary: one module per area, shared fixtures in `helpers`.

mod crash;
mod helpers;
mod scan;
mod serve;
mod ticks;
mod tokens;
