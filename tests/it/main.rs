//! The integration test binary: one module per area, shared fixtures in `helpers`.

mod bad_input;
mod connections;
mod crash;
mod dashboard;
mod demo;
mod faults;
mod helpers;
mod matrix;
mod numbers;
mod pages;
mod policy_edits;
mod reads;
mod releases;
mod scan;
mod secrets;
mod serve;
mod start;
mod statistics;
mod ticks;
mod tokens;
mod walkthrough;
mod web;
mod web_admin;
mod web_dashboard;
