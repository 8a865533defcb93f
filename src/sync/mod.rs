//! Sources that feed the registry. Each writes only entries tagged with its
//! own [`Source`](crate::registry::Source), so a resync of one never
//! deletes another's.
//!
//! `files` reads service definitions from the zones directory; `consul`
//! mirrors a Consul agent (sidecar mode); `docker` registers running
//! containers as Registrator did.

pub mod consul;
pub mod docker;
pub mod files;
