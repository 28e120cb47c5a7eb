//! The integration test binary: one module per area, shared fixtures in `helpers`.

mod crash;
mod demo;
mod helpers;
mod reads;
mod releases;
mod scan;
mod serve;
mod statistics;
mod ticks;
mod tokens;
