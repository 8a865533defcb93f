//! Consul's single-dash long options (`-http-addr=x`, `-recurse`)
//! rewritten to the double-dash form clap takes.

/// Rewrites Consul's single-dash long options (`-http-addr=x`,
/// `-recurse`) to the double-dash form clap takes. Only options of the
/// client commands are rewritten, and only before the command's own
/// arguments end (`--`, or a handler or lock command).
pub fn consul_style_args(args: Vec<String>) -> Vec<String> {
    const LONG: &[&str] = &[
        "http-addr",
        "token",
        "token-file",
        "recurse",
        "detailed",
        "cas",
        "modify-index",
        "flags",
        "tags",
        "node",
        "service",
        "type",
        "key",
        "prefix",
        "tag",
        "passingonly",
        "state",
        "name",
        "id",
    ];
    let is_client = args.get(1).is_some_and(|c| {
        [
            "kv", "services", "catalog", "watch", "lock", "members", "info",
        ]
        .contains(&c.as_str())
    });
    if !is_client {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut done = false;
    for a in args {
        if !done && a == "--" {
            done = true;
        }
        let name = a.strip_prefix('-').filter(|r| !r.starts_with('-'));
        let word = name.map(|r| r.split('=').next().unwrap_or(r));
        if !done && word.is_some_and(|w| LONG.contains(&w)) {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::consul_style_args;

    fn rewrite(line: &str) -> String {
        consul_style_args(line.split(' ').map(String::from).collect()).join(" ")
    }

    #[test]
    fn consul_spellings_become_clap_spellings() {
        for (given, want) in [
            // Client commands' single-dash long options.
            (
                "signpost kv get -recurse -http-addr=127.0.0.1:8500 app/",
                "signpost kv get --recurse --http-addr=127.0.0.1:8500 app/",
            ),
            (
                "signpost kv put -cas -modify-index=5 k v",
                "signpost kv put --cas --modify-index=5 k v",
            ),
            (
                "signpost watch -type=key -key=k",
                "signpost watch --type=key --key=k",
            ),
            // Double dashes and short options are left alone.
            (
                "signpost kv get --recurse -h",
                "signpost kv get --recurse -h",
            ),
            // Unknown words are left alone (clap says what is wrong).
            ("signpost kv get -bogus k", "signpost kv get -bogus k"),
            // After `--`, the command's own arguments are never touched.
            (
                "signpost lock -name=x app -- sh -c -token",
                "signpost lock --name=x app -- sh -c -token",
            ),
            // Server flags are not client options.
            ("signpost -node web", "signpost -node web"),
            ("signpost check -node web", "signpost check -node web"),
        ] {
            assert_eq!(rewrite(given), want, "{given}");
        }
    }
}
