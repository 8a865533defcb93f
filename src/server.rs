//! Wires the parts together: load the zones, build the registry and its
//! answer sets, start the listeners; and stop them again.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::dns::answers::{AnswerConfig, Answers};
use crate::dns::handler::Handler;
use crate::dns::server::DnsServer;
use crate::registry::Registry;
use crate::sync::files::{self, Definitions, FileError, OwnNode};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Zones(#[from] FileError),
    #[error("{0}")]
    Listen(#[from] std::io::Error),
}

/// A running signpost.
pub struct Signpost {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub answers: Arc<Answers>,
    dns: DnsServer,
}

/// Loads and validates the zones directory of `config`, if any.
pub fn load_zones(config: &Config) -> Result<Definitions, FileError> {
    match &config.zones {
        Some(dir) => files::load_dir(dir),
        None => Ok(Definitions::default()),
    }
}

impl Signpost {
    /// Loads the zones and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Signpost, StartError> {
        let defs = load_zones(&config)?;
        let answers = Arc::new(Answers::new(AnswerConfig {
            domain: config.domain.clone(),
            datacenter: config.datacenter.clone(),
            service_ttl: config.dns_config.service_ttl,
            node_ttl: config.dns_config.node_ttl,
            only_passing: config.dns_config.only_passing,
            soa: config.dns_config.soa,
            node_name: config.node.clone(),
            node_address: config.node_address(),
        }));
        let registry = Arc::new(Registry::new(answers.clone()));
        let own = OwnNode {
            name: config.node.clone(),
            address: config.node_address().to_string(),
            datacenter: config.datacenter.clone(),
        };
        let (files, instances) = (defs.files, defs.instance_count());
        defs.apply(&registry, &own);
        tracing::info!(files, instances, "loaded service definitions");
        let handler = Arc::new(Handler::new(
            answers.clone(),
            config.dns_config.udp_payload_max,
        ));
        let dns = DnsServer::start(&config.dns, handler)?;
        for addr in dns.local_addrs() {
            tracing::info!("serving DNS on {addr} (udp, tcp) for {}.", config.domain);
        }
        Ok(Signpost {
            config,
            registry,
            answers,
            dns,
        })
    }

    /// The DNS addresses actually bound (port 0 resolved), UDP and TCP alike.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.local_addrs()
    }

    /// Stops the listeners, letting in-flight queries finish.
    pub async fn shutdown(self) {
        self.dns.shutdown().await;
    }
}
