//! Services in other datacenters (sidecar mode): the sync that knows them
//! ([`Remote`]) and the first wait for one not watched yet.

use super::*;

/// How long a first query for a service in another datacenter waits for
/// the agent's answer before it gets SERVFAIL.
pub(super) const REMOTE_FIRST_WAIT: Duration = Duration::from_secs(3);

/// The DNS side of sidecar mode (implemented by `sync::consul`).
pub trait Remote: Send + Sync {
    /// The first full sync is done: a name not found is really unknown.
    fn ready(&self) -> bool;
    /// The agent lists this (lower-cased) datacenter.
    fn knows(&self, dc: &str) -> bool;
    /// Marks a remote service as used; true once its first answer is in.
    fn touch(&self, dc: &str, service: &str) -> bool;
    /// Watches a remote service from now on; resolves once its first
    /// answer is in the registry.
    fn watch(&self, dc: String, service: String) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl Handler {
    /// Sidecar mode: readiness and other datacenters come from the sync.
    pub fn with_remote(mut self, remote: Arc<dyn Remote>) -> Handler {
        self.remote = Some(remote);
        self
    }

    /// Answers a query `handle` sent to [`Outcome::Remote`]: starts watching
    /// the service in its datacenter, waits (a bounded time) for the first
    /// answer, and answers from memory.
    pub async fn remote(&self, query: &[u8], transport: Transport, client: IpAddr) -> Vec<u8> {
        let Parsed::Query(q) = parse_query(query) else {
            return Vec::new();
        };
        if let (Some(r), Some((dc, name))) = (&self.remote, self.remote_target(&q)) {
            let _ = tokio::time::timeout(REMOTE_FIRST_WAIT, r.watch(dc, name)).await;
        }
        let mut out = Vec::new();
        match self.handle(query, transport, client, &mut out, &mut Scratch::default()) {
            Outcome::Reply => out,
            Outcome::Forward => match self.admit_forward(query, client) {
                Ok(t) => self.forward(query, transport, t).await,
                Err(reply) => reply,
            },
            Outcome::Drop => Vec::new(),
            Outcome::Remote => {
                let trusted = self.is_trusted(client);
                let w = ResponseWriter::new(&mut out, &q, self.budget(transport, q.edns, trusted));
                let flags = Flags {
                    authoritative: false,
                    recursion_available: self.forwarder.is_some(),
                };
                w.finish(Rcode::ServFail, flags, self.udp_cap(trusted));
                out
            }
        }
    }

    /// (datacenter, service), lower-cased, of a query for a service in a
    /// named datacenter.
    pub(super) fn remote_target(&self, q: &Query<'_>) -> Option<(String, String)> {
        let labels = Labels::split(q.qname)?;
        let head = self
            .answers
            .config()
            .domains
            .iter()
            .find_map(|d| labels.strip_domain(d))?;
        match classify(&labels, head) {
            Lookup::Service {
                name, dc: Some(dc), ..
            } => Some((
                String::from_utf8_lossy(dc).to_ascii_lowercase(),
                String::from_utf8_lossy(name).to_ascii_lowercase(),
            )),
            // A prepared query failing over: the first of its datacenters
            // whose service is not watched yet.
            Lookup::Query { name, .. } => {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                let spec = self
                    .answers
                    .template(&name)
                    .map(Arc::new)
                    .or_else(|| self.answers.query_failover(&name))?;
                let service = spec.service.to_ascii_lowercase();
                let remote = self.remote.as_ref()?;
                spec.failover_datacenters().into_iter().find_map(|dc| {
                    (remote.knows(&dc)
                        && self.answers.service_in(&dc, &service).is_none()
                        && !remote.touch(&dc, &service))
                    .then(|| (dc, service.clone()))
                })
            }
            _ => None,
        }
    }

    /// A service's answers in another datacenter, when sidecar mode knows
    /// that datacenter; `Err` with the outcome otherwise.
    pub(super) fn remote_set(
        &self,
        dc: &[u8],
        name: &[u8],
    ) -> Result<Option<Arc<crate::dns::answers::ServiceSet>>, Found> {
        let Some(r) = &self.remote else {
            return Err(Found::NxDomain);
        };
        let (mut dc_buf, mut name_buf) = ([0u8; 63], [0u8; 63]);
        let (Some(dc), Some(name)) = (lower(dc, &mut dc_buf), lower(name, &mut name_buf)) else {
            return Err(Found::NxDomain);
        };
        // An unknown datacenter is answered at once, never asked about.
        if !r.knows(dc) {
            return Err(Found::NxDomain);
        }
        match self.answers.service_in(dc, name) {
            Some(set) => {
                r.touch(dc, name);
                Ok(Some(set))
            }
            None if r.touch(dc, name) => Ok(None),
            None => Err(Found::Remote),
        }
    }
}
