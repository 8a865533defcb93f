//! Property tests of the query-name parser and the request handler: any
//! bytes are answered or dropped without a panic, and every well-formed
//! query gets a well-formed reply within its size budget. Case counts are
//! fixed, so the run is bounded.

use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use signpost::dns::answers::Answers;
use signpost::dns::handler::{Handler, Outcome, Scratch};
use signpost::dns::name::{classify, DomainName, Labels};
use signpost::dns::wire::Transport;
use signpost::registry::Registry;
use signpost::sync::files::{load_dir, OwnNode};
use signpost::Config;

use crate::support::ZoneDir;

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

const SERVICES: &str = r#"{"services": [
  {"id": "a1", "name": "api", "tags": ["v1", "blue"], "address": "10.0.0.1", "port": 80},
  {"id": "a2", "name": "api", "tags": ["v2"], "address": "2001:db8::2", "port": 81},
  {"id": "h", "name": "host", "address": "api.service.consul", "port": 82}
]}"#;

fn handler() -> Handler {
    let zones = ZoneDir::new(&[
        ("s.json", SERVICES),
        ("c.json", &crate::zones::bench_catalog(20, 30)),
    ]);
    let mut config = Config::ephemeral();
    config.alt_domain = Some(DomainName::new("alt").unwrap());
    let answers = Arc::new(Answers::new(config.answer_config()));
    let registry = Registry::new(answers.clone());
    let own = OwnNode {
        name: "me".into(),
        address: "127.0.0.1".into(),
        datacenter: "dc1".into(),
    };
    load_dir(zones.path()).unwrap().apply(&registry, &own);
    Handler::new(answers, Vec::new(), None)
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("service".to_string()),
        Just("node".to_string()),
        Just("addr".to_string()),
        Just("dc".to_string()),
        Just("dc1".to_string()),
        Just("consul".to_string()),
        Just("alt".to_string()),
        Just("api".to_string()),
        Just("s1".to_string()),
        Just("_api".to_string()),
        Just("_tcp".to_string()),
        Just("v1".to_string()),
        Just("host".to_string()),
        Just("n3-4".to_string()),
        Just("0a000001".to_string()),
        Just("in-addr".to_string()),
        Just("arpa".to_string()),
        "[a-zA-Z0-9_-]{1,12}",
    ]
}

fn rtype() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        Just(RecordType::A),
        Just(RecordType::AAAA),
        Just(RecordType::SRV),
        Just(RecordType::ANY),
        Just(RecordType::TXT),
        Just(RecordType::PTR),
        Just(RecordType::SOA),
        Just(RecordType::NS),
        Just(RecordType::MX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_answered_or_dropped_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        thread_local!(static H: Handler = handler());
        H.with(|h| {
            let mut out = Vec::new();
            let mut scratch = Scratch::default();
            for transport in [Transport::Udp, Transport::Tcp] {
                if h.handle(&bytes, transport, LOCAL, &mut out, &mut scratch) == Outcome::Reply {
                    prop_assert!(out.len() >= 12);
                    prop_assert_eq!(&out[..2], &bytes[..2], "reply carries the query's ID");
                    prop_assert!(Message::from_vec(&out).is_ok(), "reply parses: {:?}", out);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn well_formed_queries_get_well_formed_replies(
        labels in proptest::collection::vec(label(), 0..7),
        rtype in rtype(),
        edns in proptest::option::of(0u16..5000),
        tcp in any::<bool>(),
    ) {
        thread_local!(static H: Handler = handler());
        let Ok(mut name) = Name::from_labels(labels.iter().map(|l| l.as_bytes())) else {
            return Ok(());
        };
        name.set_fqdn(true);
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(name.clone(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        let q = m.to_vec().unwrap();
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        H.with(|h| {
            let mut out = Vec::new();
            prop_assert_eq!(h.handle(&q, transport, LOCAL, &mut out, &mut Scratch::default()), Outcome::Reply);
            let budget = match (tcp, edns) {
                (true, _) => 65535,
                (false, None) => 512,
                (false, Some(s)) => (s as usize).clamp(512, 1232),
            };
            prop_assert!(out.len() <= budget, "{} bytes over a budget of {}", out.len(), budget);
            let r = Message::from_vec(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out:?}")))?;
            prop_assert_eq!(r.metadata.message_type, MessageType::Response);
            prop_assert_eq!(r.metadata.id, 7);
            prop_assert_eq!(r.queries.len(), 1);
            prop_assert_eq!(r.queries[0].name(), &name);
            prop_assert_eq!(r.edns.is_some(), edns.is_some(), "OPT iff EDNS");
            Ok(())
        })?;
    }

    #[test]
    fn the_name_parser_never_panics(labels in proptest::collection::vec("[a-z_0-9.-]{0,70}", 0..10)) {
        let mut wire = Vec::new();
        for l in &labels {
            let l = &l.as_bytes()[..l.len().min(63)];
            if l.is_empty() { continue; }
            wire.push(l.len() as u8);
            wire.extend_from_slice(l);
        }
        wire.push(0);
        if let Some(parsed) = Labels::split(&wire) {
            let domain = DomainName::new("consul").unwrap();
            if let Some(head) = parsed.strip_domain(&domain) {
                let _ = classify(&parsed, head);
            }
        }
    }
}
