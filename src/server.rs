//! Wires the parts together: load the zones, build the registry and its
//! answer sets, start the listeners; and stop them again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, Api};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::dns::answers::Answers;
use crate::dns::forward::Forwarder;
use crate::dns::handler::Handler;
use crate::dns::server::DnsServer;
use crate::health::HealthChecks;
use crate::metrics::Metrics;
use crate::registry::shared::Agent;
use crate::registry::{Registry, Store, StoreError};
use crate::sync::consul::{ConsulSync, Sidecar, SyncError};
use crate::sync::files::{self, Definitions, FileError, OwnNode};
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::metrics::{counter, gauge};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file of `zones/` (service definitions or a static zone).
    #[error(transparent)]
    Zones(#[from] crate::located::Located),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consul(#[from] SyncError),
    #[error(transparent)]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::etcd::EtcdError),
}

/// How long in-flight HTTP requests get to finish at shutdown; blocking
/// queries are cut off then.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// A running signpost.
pub struct Signpost {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub answers: Arc<Answers>,
    pub health: Arc<HealthChecks>,
    pub metrics: Arc<Metrics>,
    /// Sidecar mode's sync, when `--consul` is set.
    pub consul: Option<Arc<ConsulSync>>,
    /// This member of the cluster, when `--etcd` is set.
    pub cluster: Option<Arc<Cluster>>,
    handler: Arc<Handler>,
    dns: DnsServer,
    http_addr: SocketAddr,
    http_stop: tokio::sync::watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<()>,
    sessions_stop: tokio::sync::watch::Sender<bool>,
    sessions_task: tokio::task::JoinHandle<()>,
    docker_stop: tokio::sync::watch::Sender<bool>,
    /// The Docker source and its task, when `--docker` is set.
    pub docker: Option<(
        Arc<crate::sync::docker::DockerSync>,
        tokio::task::JoinHandle<()>,
    )>,
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
        crate::registry::model::set_check_output_max(config.check_output_max_size);
        let defs = load_zones(&config)?;
        let answers = Arc::new(Answers::new(config.answer_config()));
        let mut cluster = None;
        let registry = match (&config.cluster, &config.data_dir) {
            (Some(c), _) => {
                let me = Agent {
                    name: config.node.clone(),
                    address: config.node_address().to_string(),
                    datacenter: config.datacenter.clone(),
                };
                let member = Cluster::new(c.clone(), me)?;
                let registry = Registry::with_shared(answers.clone(), member.clone());
                member.start(&registry);
                tracing::info!(
                    "cluster mode: node {} sharing the registry under {} in etcd {}",
                    config.node,
                    c.prefix,
                    c.endpoints.join(",")
                );
                cluster = Some(member);
                registry
            }
            (None, Some(dir)) => {
                let (mut store, mut saved) = Store::open_and_load(dir, config.damaged_store)?;
                store.adopt_node(&config.node, &mut saved)?;
                let index = saved.index;
                let registry = Registry::with_store(answers.clone(), Some(Box::new(store)));
                let restored = registry.restore(saved);
                tracing::info!(
                    entries = restored,
                    index,
                    "restored API registrations and KV from {}",
                    dir.join(crate::registry::store::FILE_NAME).display()
                );
                registry
            }
            (None, None) => {
                tracing::warn!(
                    "no --data-dir: services registered through the HTTP API are kept in memory only and lost at restart"
                );
                Registry::new(answers.clone())
            }
        };
        let own = OwnNode {
            name: config.node.clone(),
            address: config.node_address().to_string(),
            datacenter: config.datacenter.clone(),
        };
        let (files, instances) = (defs.files, defs.instance_count());
        defs.apply(&registry, &own);
        if cluster.is_none() {
            // Consul's agents carry serfHealth on their node and its
            // clients expect it (sessions tie to it by default); in a
            // cluster it comes from the member list instead.
            registry
                .write(|t| t.upsert_check(crate::registry::shared::serf_check(&own.name, true)));
        }
        tracing::info!(files, instances, "loaded service definitions");
        let zones = match &config.zones {
            Some(dir) => crate::dns::zones::load_dir(dir)?,
            None => Vec::new(),
        };
        for z in &zones {
            tracing::info!("serving static zone {} from {}", z.origin, z.path.display());
        }
        let forwarder = (!config.recursors.upstreams.is_empty()).then(|| {
            Arc::new(Forwarder::new(
                &config.recursors,
                config.dns_config.udp_payload_max,
            ))
        });
        // Each component's stats, read by its collector at scrape time.
        let mut metrics = Metrics::new();
        if registry.is_durable() {
            metrics.register(Box::new(StoreCollector(registry.store_status().clone())));
        }
        if let Some(c) = &cluster {
            metrics.register(Box::new(crate::cluster::ClusterCollector(c.clone())));
        }
        if let Some(f) = &forwarder {
            metrics.register(Box::new(crate::dns::forward::ForwardCollector(f.clone())));
        }
        let tcp_conns = crate::dns::tcp::TcpConns::new();
        metrics.register(Box::new(crate::dns::tcp::TcpCollector(tcp_conns.clone())));
        metrics.register(Box::new(crate::dns::answers::AnswersCollector(
            answers.clone(),
        )));
        let dns_stats = Arc::new(crate::dns::stats::DnsStats::default());
        metrics.register(Box::new(Arc::clone(&dns_stats)));
        let http_stats = Arc::new(api::serve::HttpStats::default());
        metrics.register(Box::new(api::serve::HttpCollector(http_stats.clone())));
        metrics.register(Box::new(RegistryCollector(registry.clone())));
        let check_runs = crate::health::CheckRuns::default();
        check_runs.register(&mut metrics);
        let events = api::event::Events::default();
        events.register(&mut metrics);
        let consul_stats = crate::sync::consul::ConsulStats::default();
        if config.consul.is_some() {
            consul_stats.register(&mut metrics);
        }
        let docker_stats = crate::sync::docker::DockerStats::default();
        if config.docker.is_some() {
            docker_stats.register(&mut metrics);
        }
        let metrics = Arc::new(metrics);
        let health = HealthChecks::start(
            registry.clone(),
            check_runs,
            cluster.as_ref().map(|_| config.node.clone()),
        );
        let consul = match &config.consul {
            Some(c) => {
                let sync = ConsulSync::new(
                    c.clone(),
                    registry.clone(),
                    config.datacenter.clone(),
                    consul_stats,
                )?;
                sync.start();
                tracing::info!("sidecar mode: following the consul agent at {}", c.url);
                Some(sync)
            }
            None => None,
        };
        let (docker_stop, docker_stopped) = tokio::sync::watch::channel(false);
        let docker = config.docker.as_ref().map(|d| {
            let mut served: Vec<(u16, bool)> = config
                .dns
                .iter()
                .flat_map(|a| [(a.port(), true), (a.port(), false)])
                .collect();
            served.push((config.http.port(), false));
            let own = crate::sync::docker::OwnContainer::detect(served);
            let sync = Arc::new(
                crate::sync::docker::DockerSync::new(
                    d.clone(),
                    config.node_address(),
                    config.node.clone(),
                    docker_stats,
                )
                .with_own(own),
            );
            tracing::info!("registering containers from the Docker engine at {}", d.url);
            (
                sync.clone(),
                tokio::spawn(sync.run(registry.clone(), docker_stopped)),
            )
        });
        let mut handler = Handler::new(answers.clone(), zones, forwarder)
            .with_stats(dns_stats)
            .with_trusted(config.recursors.allow.clone());
        if let Some(sync) = &consul {
            handler = handler.with_remote(Arc::new(Sidecar(sync.clone())));
        }
        let handler = Arc::new(handler);
        let dns = DnsServer::start(&config.dns, handler.clone(), tcp_conns, config.query_log)?;
        for addr in dns.local_addrs() {
            tracing::info!("serving DNS on {addr} (udp, tcp) for {}.", config.domain);
        }
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen for HTTP on {}: {e}", config.http),
                )
            })?;
        let http_addr = listener.local_addr()?;
        let sessions = Arc::new(api::session::Sessions::new(
            cluster.as_ref().map(|_| config.node.clone()),
        ));
        let (sessions_stop, sessions_stopped) = tokio::sync::watch::channel(false);
        let sessions_task = tokio::spawn(sessions.clone().run(registry.clone(), sessions_stopped));
        let app = api::router(Arc::new(Api {
            registry: registry.clone(),
            node: config.node.clone(),
            node_address: config.node_address(),
            datacenter: config.datacenter.clone(),
            token: config.http_token.clone(),
            sessions: sessions.clone(),
            session_ttl_min: config.session_ttl_min,
            token_for_reads: config.http_token_for_reads,
            body_timeout: config.http_limits.body_timeout,
            health: health.clone(),
            metrics: metrics.clone(),
            events,
            consul: consul.clone(),
            cluster: cluster.clone(),
            docker: docker.as_ref().map(|(d, _)| d.clone()),
            dns: handler.clone(),
            ui: config.ui,
            allowed_hosts: config.http_allowed_hosts.clone(),
        }));
        let (http_stop, stopped) = tokio::sync::watch::channel(false);
        let http_task = tokio::spawn(api::serve::serve(
            listener,
            app,
            config.http_limits,
            http_stats,
            stopped,
            HTTP_DRAIN,
        ));
        tracing::info!("serving HTTP on {http_addr}");
        Ok(Signpost {
            config,
            registry,
            answers,
            health,
            metrics,
            consul,
            cluster,
            handler,
            dns,
            http_addr,
            http_stop,
            http_task,
            sessions_stop,
            sessions_task,
            docker_stop,
            docker,
        })
    }

    /// Re-reads what can change while running: service definitions and
    /// static zones in `zones/`, and the DNS answer settings (TTLs, limits,
    /// order, SOA). Everything is loaded and checked first; a bad file
    /// leaves the running data as it was. API registrations are untouched;
    /// listen addresses, domains and the like need a restart.
    pub fn reload(&mut self, new: Config) -> Result<(), StartError> {
        let defs = load_zones(&new)?;
        let zones = match &new.zones {
            Some(dir) => crate::dns::zones::load_dir(dir)?,
            None => Vec::new(),
        };
        for (what, changed) in [
            ("dns", new.dns != self.config.dns),
            ("http", new.http != self.config.http),
            (
                "domain",
                new.domain != self.config.domain || new.alt_domain != self.config.alt_domain,
            ),
            ("datacenter", new.datacenter != self.config.datacenter),
            ("node", new.node != self.config.node),
            ("data_dir", new.data_dir != self.config.data_dir),
        ] {
            if changed {
                tracing::warn!("reload: a new {what} setting takes effect at the next restart");
            }
        }
        let own = OwnNode {
            name: self.config.node.clone(),
            address: self.config.node_address().to_string(),
            datacenter: self.config.datacenter.clone(),
        };
        let mut settings = self.config.answer_config();
        settings.dns = new.dns_config.clone();
        self.answers.set_config(settings);
        self.handler.set_zones(zones);
        self.handler.reload_admission();
        // Every answer set rebuilt with the new settings first, so that no
        // reader sees new files answered under the new settings while the
        // old sets still carry the old ones.
        self.registry.write(|t| t.touch_all());
        let (files, instances) = (defs.files, defs.instance_count());
        defs.apply(&self.registry, &own);
        self.config.dns_config = new.dns_config;
        self.config.zones = new.zones;
        tracing::info!(
            files,
            instances,
            "reloaded service definitions, static zones and DNS settings"
        );
        Ok(())
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The DNS addresses actually bound (port 0 resolved), UDP and TCP alike.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.local_addrs()
    }

    /// Stops the listeners, letting in-flight queries and requests finish
    /// (blocking HTTP queries get a few seconds, then are cut off).
    pub async fn shutdown(self) {
        let _ = self.http_stop.send(true);
        let mut http_task = self.http_task;
        if tokio::time::timeout(HTTP_DRAIN, &mut http_task)
            .await
            .is_err()
        {
            http_task.abort();
        }
        let _ = self.sessions_stop.send(true);
        let _ = self.sessions_task.await;
        if let Some(c) = &self.consul {
            c.shutdown().await;
        }
        let _ = self.docker_stop.send(true);
        if let Some((_, task)) = self.docker {
            let _ = task.await;
        }
        self.health.shutdown().await;
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
        self.dns.shutdown().await;
        // Every acknowledged write is on disk already; this lets queued
        // ones finish and closes the store cleanly.
        let registry = self.registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.close()).await;
    }
}

/// The registry's size and index, counted at scrape time.
struct RegistryCollector(Arc<Registry>);

impl std::fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCollector")
    }
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let (services, instances, checks, index) = self.0.read(|s| {
            let mut by_status = [0i64; 3];
            for c in s.checks() {
                by_status[c.status as usize] += 1;
            }
            (
                s.service_names().count() as i64,
                s.instances().count() as i64,
                by_status,
                s.index() as i64,
            )
        });
        gauge(
            &mut encoder,
            "registry_services",
            "Services in the registry",
            services,
        )?;
        gauge(
            &mut encoder,
            "registry_instances",
            "Service instances in the registry",
            instances,
        )?;
        let family = prometheus_client::metrics::family::Family::<
            crate::metrics::StatusLabel,
            prometheus_client::metrics::gauge::Gauge,
        >::default();
        for (status, n) in ["passing", "warning", "critical"].into_iter().zip(checks) {
            family
                .get_or_create(&crate::metrics::StatusLabel { status })
                .set(n);
        }
        family.encode(encoder.encode_descriptor(
            "registry_checks",
            "Checks in the registry, by status",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(
            &mut encoder,
            "registry_change_index",
            "The registry's change index",
            index,
        )
    }
}

/// The store's health and group commit, read from the registry's
/// [`StoreStatus`](crate::registry::StoreStatus) at scrape time.
#[derive(Debug)]
struct StoreCollector(Arc<crate::registry::StoreStatus>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let degraded = i64::from(s.is_degraded());
        gauge(&mut encoder, "store_degraded", "1 while the store in --data-dir refuses writes (API writes get 5xx; reads and DNS go on)", degraded)?;
        let commit_seconds = s.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_descriptor(
                "store_commit_seconds",
                "Time spent writing batches to the store, fsync included (divide by store_batches_total for the mean)",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&commit_seconds, None)?;
        for (name, help, value) in [
            (
                "store_failed_batches",
                "Batches of writes the store refused",
                &s.failed_batches,
            ),
            (
                "store_refused_writes",
                "API writes refused because the store refused them",
                &s.refused_writes,
            ),
            (
                "store_batches",
                "Batches written to the store (one fsync each)",
                &s.batches,
            ),
            (
                "store_batched_writes",
                "API writes carried by those batches (writes per batch: the group-commit factor)",
                &s.batched_writes,
            ),
        ] {
            counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}
