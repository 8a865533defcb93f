//! Registrator's mapping of one container, a pure function of the engine's
//! inspect data: which ports, under which names, tags, meta and checks;
//! and which container signpost itself runs in.

use super::*;

/// signpost's own container: registered at the ports signpost serves only
/// (an image's `EXPOSE` may name others, which nothing listens on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContainer {
    pub id: String,
    /// (container port, udp) pairs signpost listens on.
    pub served: Vec<(u16, bool)>,
}

impl OwnContainer {
    /// The container this process runs in, read from `/proc/self/mountinfo`
    /// (Docker mounts the container's `hostname` and `resolv.conf` from
    /// `.../containers/<id>/`); `None` outside a container.
    pub fn detect(served: Vec<(u16, bool)>) -> Option<OwnContainer> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let id = container_id_in_mountinfo(&text)?;
        tracing::info!(
            "running in container {}: registering it at the ports signpost serves only",
            short(&id)
        );
        Some(OwnContainer { id, served })
    }
}

/// The 64-hex-digit ID in a `/containers/<id>/` mount source, if any.
pub(super) fn container_id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.split("/containers/").nth(1)?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// The container's `SERVICE_*` settings: env vars, then labels over them.
pub(super) fn settings(info: &ContainerInspectResponse) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(config) = &info.config {
        for e in config.env.iter().flatten() {
            if let Some((k, v)) = e.split_once('=') {
                if k.starts_with("SERVICE_") {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        for (k, v) in config.labels.iter().flatten() {
            if k.starts_with("SERVICE_") {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A port a container offers: the container's port and protocol, and
/// where it is reached.
pub(super) struct Port {
    pub(super) private: u16,
    pub(super) udp: bool,
    pub(super) address: String,
    pub(super) port: u16,
}

pub(super) fn ports(
    info: &ContainerInspectResponse,
    host_ip: IpAddr,
    config: &DockerConfig,
) -> Vec<Port> {
    let Some(net) = &info.network_settings else {
        return Vec::new();
    };
    let parse = |key: &str| -> Option<(u16, bool)> {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        Some((port.parse().ok()?, proto == "udp"))
    };
    let mut out: Vec<Port> = Vec::new();
    if config.internal {
        let address = container_address(info, config.network.as_deref());
        let Some(address) = address else {
            return Vec::new();
        };
        let exposed = info
            .config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|e| e.iter().map(|k| k.to_string()).collect::<Vec<_>>())
            .unwrap_or_default();
        for key in exposed {
            if let Some((private, udp)) = parse(&key) {
                out.push(Port {
                    private,
                    udp,
                    address: address.clone(),
                    port: private,
                });
            }
        }
    } else {
        for (key, bindings) in net.ports.iter().flatten() {
            let Some((private, udp)) = parse(key) else {
                continue;
            };
            // One instance a published port: the IPv4 binding when the
            // engine published it on both families.
            let mut bindings: Vec<_> = bindings.iter().flatten().collect();
            bindings.sort_by_key(|b| b.host_ip.as_deref().is_some_and(|ip| ip.contains(':')));
            let Some(b) = bindings.first() else { continue };
            let Some(port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let address = match b.host_ip.as_deref() {
                Some(ip) if !ip.is_empty() && ip != "0.0.0.0" && ip != "::" => ip.to_string(),
                _ => host_ip.to_string(),
            };
            out.push(Port {
                private,
                udp,
                address,
                port,
            });
        }
    }
    out.sort_by_key(|p| (p.private, p.udp));
    out
}

/// The container's address on `network` (or on its only or first network
/// by name), IPv4 first, else its IPv6 address.
pub(super) fn container_address(
    info: &ContainerInspectResponse,
    network: Option<&str>,
) -> Option<String> {
    let net = info.network_settings.as_ref()?;
    let networks = net.networks.as_ref();
    let endpoint = match network {
        Some(name) => networks.and_then(|n| n.get(name)),
        None => networks.and_then(|n| {
            let mut names: Vec<&String> = n.keys().collect();
            names.sort();
            names.first().and_then(|k| n.get(*k))
        }),
    }?;
    let v4 = endpoint.ip_address.clone().filter(|a| !a.is_empty());
    let v6 = endpoint
        .global_ipv6_address
        .clone()
        .filter(|a| !a.is_empty());
    v4.or(v6)
}

/// The image's base name: `registry:5000/team/web:1.2` is `web`.
pub(super) fn image_name(info: &ContainerInspectResponse) -> String {
    let image = info
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(&image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    base.to_string()
}

/// Registrator's mapping, as a pure function of the inspect data.
pub fn contribution(
    info: &ContainerInspectResponse,
    node: &str,
    host_ip: IpAddr,
    config: &DockerConfig,
    own: Option<&OwnContainer>,
) -> Contribution {
    let mut out = Contribution::default();
    if !running(info) {
        return out;
    }
    let own = own.filter(|o| info.id.as_deref() == Some(o.id.as_str()));
    let set = settings(info);
    let truthy = |v: Option<&String>| v.is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    if truthy(set.get("SERVICE_IGNORE")) {
        return out;
    }
    let container_name = info
        .name
        .as_deref()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let mut ports = ports(info, host_ip, config);
    if let Some(own) = own {
        ports.retain(|p| {
            let served = own.served.contains(&(p.private, p.udp));
            if !served {
                out.skipped.push(format!(
                    "port {}{}: signpost's own container, and signpost does not listen there",
                    p.private,
                    if p.udp { "/udp" } else { "" }
                ));
            }
            served
        });
    }
    let many = ports.len() > 1;
    let paused = info.state.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let health = info.state.as_ref().and_then(|s| s.health.as_ref());
    for p in &ports {
        let pk = |key: &str| set.get(&format!("SERVICE_{}_{key}", p.private));
        let get = |key: &str| pk(key).or_else(|| set.get(&format!("SERVICE_{key}")));
        if truthy(pk("IGNORE")) {
            continue;
        }
        let name = match (pk("NAME"), set.get("SERVICE_NAME")) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) if many => format!("{n}-{}", p.private),
            (None, Some(n)) => n.clone(),
            (None, None) if many => format!("{}-{}", image_name(info), p.private),
            (None, None) => image_name(info),
        };
        let id = match (pk("ID"), set.get("SERVICE_ID")) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) if !many => id.clone(),
            _ => format!(
                "{node}:{container_name}:{}{}",
                p.private,
                if p.udp { ":udp" } else { "" }
            ),
        };
        let tags: Vec<String> = get("TAGS")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        // Any other SERVICE_<key> (or SERVICE_<port>_<key>) goes to Meta.
        let reserved = ["NAME", "ID", "TAGS", "IGNORE"];
        let mut meta = serde_json::Map::new();
        for (k, v) in &set {
            let rest = &k["SERVICE_".len()..];
            let key = match rest.split_once('_') {
                Some((port, key)) if port.parse::<u16>().is_ok() => {
                    if port != p.private.to_string() {
                        continue;
                    }
                    key
                }
                _ if rest.chars().next().is_some_and(|c| c.is_ascii_digit()) => continue,
                _ => rest,
            };
            if reserved.contains(&key) || key.starts_with("CHECK_") || key.is_empty() {
                continue;
            }
            meta.insert(key.to_ascii_lowercase(), json!(v));
        }
        let mut def = json!({
            "Name": name,
            "ID": id,
            "Address": p.address,
            "Port": p.port,
            "Tags": tags,
            "Meta": meta,
        });
        if let Some(check) = check_def(&get, &p.address, p.port) {
            def["Check"] = check;
        }
        let def: ServiceDef = match serde_json::from_value(def) {
            Ok(d) => d,
            Err(e) => {
                out.skipped.push(format!("port {}: {e}", p.private));
                continue;
            }
        };
        let (inst, checks) = def.into_parts(node, Source::Docker);
        let state_check = |status: Health, output: String| Check {
            node: node.to_string(),
            id: format!("docker:{}", inst.id),
            name: "Docker container".into(),
            status,
            output,
            notes: format!("container {container_name}"),
            service_id: Some(inst.id.to_string()),
            service_name: inst.name.to_string(),
            kind: CheckKind::Static,
            thresholds: Default::default(),
            source: Source::Docker,
            create_index: 0,
            modify_index: 0,
        };
        if paused {
            out.checks
                .push(state_check(Health::Critical, "container is paused".into()));
        } else if let Some(h) = health {
            let status = h.status.map(|s| s.to_string()).unwrap_or_default();
            let last = h
                .log
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|l| l.output.clone())
                .unwrap_or_default();
            let (health, output) = match status.as_str() {
                "healthy" => (
                    Health::Passing,
                    format!("HEALTHCHECK healthy: {}", last.trim()),
                ),
                "unhealthy" => (
                    Health::Critical,
                    format!("HEALTHCHECK unhealthy: {}", last.trim()),
                ),
                "starting" => (
                    Health::Critical,
                    "HEALTHCHECK starting: not answered until healthy".to_string(),
                ),
                _ => (Health::Passing, String::new()),
            };
            if !status.is_empty() && status != "none" {
                out.checks.push(state_check(
                    health,
                    crate::registry::model::cap_output(output),
                ));
            }
        }
        out.checks.extend(checks);
        out.instances.push(inst);
    }
    out
}

/// Registrator's `SERVICE_CHECK_*` keys as a check definition.
pub(super) fn check_def<'a>(
    get: &impl Fn(&str) -> Option<&'a String>,
    address: &str,
    port: u16,
) -> Option<Value> {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let mut check = if let Some(path) = get("CHECK_HTTP") {
        json!({"HTTP": format!("http://{host}:{port}{path}")})
    } else if let Some(path) = get("CHECK_HTTPS") {
        json!({"HTTP": format!("https://{host}:{port}{path}"), "TLSSkipVerify": true})
    } else if get("CHECK_TCP").is_some() {
        json!({"TCP": format!("{host}:{port}")})
    } else if let Some(ttl) = get("CHECK_TTL") {
        json!({"TTL": ttl})
    } else {
        return None;
    };
    if check.get("TTL").is_none() {
        check["Interval"] = json!(get("CHECK_INTERVAL").map(String::as_str).unwrap_or("10s"));
    }
    if let Some(t) = get("CHECK_TIMEOUT") {
        check["Timeout"] = json!(t);
    }
    if let Some(s) = get("CHECK_INITIAL_STATUS") {
        check["Status"] = json!(s);
    }
    if let Some(d) = get("CHECK_DEREGISTER_AFTER") {
        check["DeregisterCriticalServiceAfter"] = json!(d);
    }
    Some(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inspect response as the engine sends it, trimmed to what the
    /// mapping reads.
    fn inspect(
        id: &str,
        env: &[&str],
        exposed: &[&str],
        published: &[(&str, &str)],
    ) -> ContainerInspectResponse {
        let exposed: serde_json::Map<String, serde_json::Value> =
            exposed.iter().map(|p| (p.to_string(), json!({}))).collect();
        let ports: serde_json::Map<String, serde_json::Value> = published
            .iter()
            .map(|(p, host)| {
                (
                    p.to_string(),
                    json!([{"HostIp": "0.0.0.0", "HostPort": host}]),
                )
            })
            .collect();
        serde_json::from_value(json!({
            "Id": id,
            "Name": "/app-1",
            "State": {"Running": true, "Paused": false},
            "Config": {"Image": "registry.example/team/app:1.2", "Env": env, "ExposedPorts": exposed},
            "NetworkSettings": {
                "Ports": ports,
                "Networks": {"apps": {"IPAddress": "10.9.0.7"}}
            }
        }))
        .unwrap()
    }

    fn config(internal: bool) -> DockerConfig {
        DockerConfig {
            url: String::new(),
            host_ip: None,
            internal,
            network: None,
        }
    }

    fn names(c: &Contribution) -> Vec<(String, String, u16)> {
        c.instances
            .iter()
            .map(|i| (i.name.to_string(), i.address.to_string(), i.port))
            .collect()
    }

    #[test]
    fn registrators_mapping() {
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        /// What, the inspect data, internal, and the (name, address, port)s.
        type Case<'a> = (
            &'a str,
            ContainerInspectResponse,
            bool,
            Vec<(&'a str, &'a str, u16)>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "one published port: the image's base name",
                inspect("a", &[], &["80/tcp"], &[("80/tcp", "8080")]),
                false,
                vec![("app", "192.0.2.1", 8080)],
            ),
            (
                "SERVICE_NAME, and an exposed port never published is left out",
                inspect(
                    "a",
                    &["SERVICE_NAME=web"],
                    &["80/tcp", "81/tcp"],
                    &[("80/tcp", "8080")],
                ),
                false,
                vec![("web", "192.0.2.1", 8080)],
            ),
            (
                "several ports: the name gets the port",
                inspect(
                    "a",
                    &["SERVICE_NAME=web"],
                    &[],
                    &[("80/tcp", "8080"), ("443/tcp", "8443")],
                ),
                false,
                vec![
                    ("web-443", "192.0.2.1", 8443),
                    ("web-80", "192.0.2.1", 8080),
                ],
            ),
            (
                "SERVICE_<port>_NAME and SERVICE_<port>_IGNORE",
                inspect(
                    "a",
                    &["SERVICE_80_NAME=front", "SERVICE_443_IGNORE=1"],
                    &[],
                    &[("80/tcp", "8080"), ("443/tcp", "8443")],
                ),
                false,
                vec![("front", "192.0.2.1", 8080)],
            ),
            (
                "SERVICE_IGNORE",
                inspect("a", &["SERVICE_IGNORE=true"], &[], &[("80/tcp", "8080")]),
                false,
                vec![],
            ),
            (
                "internal: exposed ports at the container's address",
                inspect("a", &["SERVICE_NAME=web"], &["8080/tcp"], &[]),
                true,
                vec![("web", "10.9.0.7", 8080)],
            ),
        ];
        for (what, info, internal, want) in cases {
            let got = contribution(&info, "n1", host, &config(internal), None);
            let mut got = names(&got);
            got.sort();
            let want: Vec<(String, String, u16)> = want
                .into_iter()
                .map(|(n, a, p)| (n.to_string(), a.to_string(), p))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn its_own_container_is_registered_at_served_ports_only() {
        let id = "f".repeat(64);
        let info = inspect(&id, &[], &["8600/udp", "8600/tcp", "53/udp", "53/tcp"], &[]);
        let own = OwnContainer {
            id: id.clone(),
            served: vec![(53, true), (53, false), (8500, false)],
        };
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        let got = contribution(&info, "n1", host, &config(true), Some(&own));
        let mut ports: Vec<u16> = got.instances.iter().map(|i| i.port).collect();
        ports.sort();
        assert_eq!(ports, [53, 53]);
        assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
        // Another container with the same ports keeps them all.
        let other = inspect(&"e".repeat(64), &[], &["8600/udp", "8600/tcp"], &[]);
        assert_eq!(
            contribution(&other, "n1", host, &config(true), Some(&own))
                .instances
                .len(),
            2
        );
    }

    #[test]
    fn own_container_id_from_mountinfo() {
        let id = "0123456789abcdef".repeat(4);
        let text = format!(
            "590 570 0:50 / / rw,relatime - overlay overlay rw\n\
             601 590 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_in_mountinfo(&text), Some(id));
        assert_eq!(
            container_id_in_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
    }
}
