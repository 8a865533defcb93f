//! signpost's integration tests: one binary, real sockets, servers on port 0.

#![allow(clippy::unwrap_used)]

mod support;

mod api;
mod cli;
mod client_cli;
mod clients;
mod cluster;
mod conformance;
mod dns_peers;
mod dns_queries;
mod docker;
mod health;
mod limits;
mod ops;
mod patroni;
mod properties;
mod queries;
mod resolver;
mod sessions;
mod sidecar;
mod store;
mod structure;
mod ui;
mod zones;
