//! Tellestrek: privacy-preserving usage statistics for peer-support schemes for health
//! personnel (kollegastøtteordninger).
//!
//! Supporters log a coarse, tagged contact tick; the service keeps only counts and publishes
//! them with differential-privacy noise. No conversation, timestamp or free text is stored.
//!
//! # Crate map
//!
//! Each layer imports only those to its right:
//! `main/cli -> server -> api -> service -> policy, store, auth, clock -> domain`.
//!
//! | module | owns | must not depend on |
//! | --- | --- | --- |
//! | [`domain`] | periods, roles, cell keys, token records | axum, sled, opendp, ring, tokio |
//! | [`policy`] | policy TOML: taxonomy, orgs, caps, release plan; validation | storage, HTTP, noise |
//! | [`regime`] | which policy each base period was collected under; what a policy edit does | storage, HTTP, noise |
//! | [`clock`] | the `Clock` trait; system and fixed clocks | everything else |
//! | [`auth`] | tokens, pseudonyms, signing key (the only `ring` user) | storage, HTTP |
//! | [`store`] | sled key layout, transactions, group-commit durability (the only `sled` user) | HTTP, noise |
//! | [`export`] | the CSV form of releases for researchers: labels, `<3`, rounded ε | storage, HTTP, noise |
//! | [`service`] | use cases: authenticate, log tick, tokens, periods | axum |
//! | [`api`] | JSON handlers, extractors, the one error-to-HTTP mapping | sled, opendp, ring |
//! | [`logging`] | the log filter: the operator's verbosity reaches this crate only | everything else |
//! | [`fault`] | named fault-injection points for the crash tests (inactive unless a test sets them) | everything else |
//! | [`web`] | the pages (askama, Fluent), sign-in by token or invite link, the tick page, assets | sled, opendp, ring |
//! | [`server`] | router, `run` over a bound listener, shutdown | sled, opendp, ring |
//! | [`backup`] | a consistent copy of a data directory with a manifest; restore into a new one | axum, sled (through `store`) |

pub mod api;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod demo;
pub mod domain;
pub mod dp;
pub mod export;
pub mod fault;
pub mod logging;
pub mod plan;
pub mod policy;
pub mod regime;
pub mod release;
pub mod server;
pub mod service;
pub mod store;
pub mod web;
