//! DNS: from a query's bytes to a response's bytes, and the listeners.
//!
//! `name` parses question names, `answers` keeps the ready-made record sets
//! the registry feeds, `wire` reads queries and writes responses within the
//! size budget, `zones` serves static zone files, `forward` sends other
//! names upstream, `handler` ties them together, `server` runs UDP and TCP
//! (`udp`: the batched receive/send and load shedding; `tcp`: connections
//! and their limits). `settings` holds the answer policy and forwarding
//! settings that `config` validates.

pub mod answers;
pub mod cookie;
pub mod forward;
pub mod handler;
pub mod name;
pub mod server;
pub mod settings;
pub mod stats;
pub mod tcp;
pub mod udp;
pub mod wire;
pub mod zones;
