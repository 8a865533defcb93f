//! signpost: a DNS server for service discovery.
//!
//! Data flows left to right:
//!
//! ```text
//! zones/ (sync::files), api ─► registry ─(change listener)─► dns::answers ─► dns::handler ─► dns::server
//!                               ▲  │
//!                          health (checks)
//! ```
//!
//! Dependencies point one way: `server`/`cli` → `config` → `api`, `dns`,
//! `sync`, `health`, `cluster` → `registry`, with `metrics`, `net`, `locks`,
//! `located`, `consul_client`, `fold` and `fds` at the bottom; the registry imports
//! nothing else from the crate. `tests/it/structure.rs` keeps it so.
//!
//! * [`alloc`]    — mimalloc's settings, shared by the binary and the memory bench.
//! * [`api`]      — the Consul-compatible HTTP API (agent, catalog, health, KV).
//! * [`cluster`]  — cluster mode: the registry shared through etcd, and
//!   this member's liveness there.
//! * [`config`]   — flags and TOML, validated into a `Config`.
//! * [`consul_client`] — one client for a Consul agent's HTTP API (the CLI's
//!   and the sidecar sync's), and why a request failed.
//! * [`fds`]      — the open-file limit (raised at start, sizes TCP's).
//! * [`fold`]     — JSON field names matched as Consul matches them (case
//!   and underscores ignored), for request bodies and definition files.
//! * [`health`]   — runs HTTP, TCP and TTL checks and writes their status back.
//! * [`located`]  — an error at `path:line:column`, for every file signpost reads.
//! * [`locks`]    — std locks taken back after a panic poisoned them.
//! * [`metrics`]  — Prometheus metrics for `/metrics`.
//! * [`net`]      — connection admission shared by the HTTP and DNS TCP
//!   accept loops (caps that close the idlest connection, not the newest).
//! * [`registry`] — nodes, instances, checks; one change index with a watch.
//! * [`sync`]     — sources that feed the registry: service definition files,
//!   a Consul agent (sidecar mode), the Docker engine.
//! * [`dns`]      — query names, ready-made answer sets, the wire format,
//!   the handler and the UDP/TCP listeners.
//! * [`server`]   — starts and stops the whole thing.
//! * [`cli`]      — the client commands (`kv`, `services`, `catalog`,
//!   `watch`, `lock`, ...) that talk to a running agent over HTTP.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod alloc;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consul_client;
pub mod dns;
pub mod fds;
pub mod fold;
pub mod health;
pub mod located;
pub mod locks;
pub mod metrics;
pub mod net;
pub mod registry;
pub mod server;
pub mod sync;

pub use config::Config;
pub use server::Signpost;
