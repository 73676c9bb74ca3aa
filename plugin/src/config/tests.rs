use super::*;
use std::collections::HashMap;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_work_out_of_the_box() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.cpu_bytes, 1 << 30);
    assert_eq!(c.store_name, super::default_store_name());
    assert_eq!(c.hash, HashAlgo::Xxh3_128);
    assert_eq!(c.metrics_addr, None);
    assert_eq!(c.log, LogLevel::Warn);
    assert!(c.store_decode);
}

#[test]
fn sizes_with_units() {
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("512MB"), Some(512_000_000));
    assert_eq!(parse_size("8GiB"), Some(8 << 30));
    assert_eq!(parse_size("1.5KiB"), Some(1536));
    assert_eq!(parse_size(" 2 TiB "), Some(2 << 40));
    for bad in ["", "GiB", "12XB", "-1", "1..2GiB", ".5GiB", "99999999999TiB"] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
}

#[test]
fn durations_and_bools() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
    assert_eq!(parse_duration("10"), None);
    for t in ["1", "TRUE", "yes", "On"] {
        assert_eq!(parse_bool(t), Some(true));
    }
    for f in ["0", "false", "NO", "off"] {
        assert_eq!(parse_bool(f), Some(false));
    }
    assert_eq!(parse_bool("maybe"), None);
}

#[test]
fn bad_values_name_variable_value_and_accepted_forms() {
    let e = cfg(&[("TIERKV_CPU_BYTES", "lots")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_CPU_BYTES");
    let msg = e.to_string();
    assert!(msg.contains("TIERKV_CPU_BYTES=\"lots\""), "{msg}");
    assert!(msg.contains("GiB"), "{msg}");
    let e = cfg(&[("TIERKV_HASH", "md5")]).unwrap_err();
    assert!(e.to_string().contains("sha256_cbor"));
    let e = cfg(&[("TIERKV_STORE_NAME", "../etc")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_STORE_NAME");
    let e = cfg(&[("TIERKV_SHM_DIR", "relative")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_SHM_DIR");
    let e = cfg(&[("TIERKV_CPU_BYTES", "100")]).unwrap_err();
    assert!(e.to_string().contains("at least 4KiB"));
    let e = cfg(&[("TIERKV_LOCK_TIMEOUT", "0s")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_LOCK_TIMEOUT");
    let e = cfg(&[("TIERKV_METRICS_ADDR", "nowhere")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_METRICS_ADDR");
    let e = cfg(&[("TIERKV_STORE_DECODE", "sometimes")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_STORE_DECODE");
}

#[test]
fn metrics_port_alone_binds_loopback() {
    let c = cfg(&[("TIERKV_METRICS_ADDR", "9400")]).unwrap();
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9400".parse().unwrap()));
}

/// `docs/configuration.md` lists exactly the variables of [`VARS`], with the same defaults.
#[test]
fn docs_and_code_agree() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let mut documented = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && cells[1].starts_with("`TIERKV_") {
            let name = cells[1].trim_matches('`').to_string();
            let default = cells[2].trim_matches('`').to_string();
            documented.push((name, default));
        }
    }
    let code: Vec<(String, String)> = VARS
        .iter()
        .map(|v| (v.name.to_string(), v.default.to_string()))
        .collect();
    assert_eq!(documented, code, "docs/configuration.md and config::VARS differ");
    // Every variable in the table is read by the parser: setting a bad value fails.
    for v in VARS {
        if ["TIERKV_NAMESPACE", "TIERKV_SEMANTIC_NAMESPACES"].contains(&v.name) {
            continue;
        }
        assert!(cfg(&[(v.name, "\u{1}bad")]).is_err(), "{} accepts anything", v.name);
    }
}

/// Every example value in docs/configuration.md's table is accepted.
#[test]
fn every_documented_example_is_accepted() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let mut tried = 0;
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`TIERKV_") {
            continue;
        }
        let name = cells[1].trim_matches('`');
        let examples = cells[cells.len() - 2];
        let values: Vec<&str> = examples.split(", ").map(|e| e.trim_matches('`')).collect();
        assert!(!values.is_empty() && !examples.is_empty(), "{name} has no examples");
        for v in values {
            // A password file is an example of a path: the test writes one (0600).
            let secret = tempfile::tempdir().unwrap();
            let file = secret.path().join("pass");
            std::fs::write(&file, "s3cret\n").unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            // TLS files: PEM files the test writes (a key 0600; a certificate and
            // its key go together).
            let pem = secret.path().join("tls.pem");
            std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
            std::fs::set_permissions(&pem, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            let pem = pem.to_str().unwrap();
            let v = match name {
                "TIERKV_REMOTE_PASSWORD_FILE" => file.to_str().unwrap(),
                n if n.starts_with("TIERKV_REMOTE_TLS_") => pem,
                _ => v,
            };
            let extra: &[(&str, &str)] = match name {
                "TIERKV_DISK_PATH" => &[("TIERKV_DISK_BYTES", "1GiB")],
                "TIERKV_REMOTE_TLS_CERT_FILE" => &[("TIERKV_REMOTE_TLS_KEY_FILE", pem)],
                "TIERKV_REMOTE_TLS_KEY_FILE" => &[("TIERKV_REMOTE_TLS_CERT_FILE", pem)],
                _ => &[],
            };
            let mut pairs = vec![(name, v)];
            pairs.extend_from_slice(extra);
            assert!(
                cfg(&pairs).is_ok(),
                "{name}={v} (documented) is refused: {:?}",
                cfg(&pairs).err()
            );
            tried += 1;
        }
    }
    assert!(tried > 60, "only {tried} examples found");
}

#[test]
fn a_typo_is_reported_with_the_closest_name() {
    assert_eq!(closest_var("TIERKV_CPU_BYTE"), Some("TIERKV_CPU_BYTES"));
    assert_eq!(closest_var("TIERKV_DISK_PAHT"), Some("TIERKV_DISK_PATH"));
    assert_eq!(closest_var("TIERKV_SOMETHING_ELSE_ENTIRELY"), None);
    let c = Config {
        unknown_vars: vec!["TIERKV_CPU_BYTE".into()],
        ..Config::default()
    };
    let w = c.unknown_var_warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("did you mean TIERKV_CPU_BYTES"), "{}", w[0]);
}

#[test]
fn the_default_store_is_per_user() {
    let c = Config::default();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(c.store_name, format!("default-u{uid}"));
}

#[test]
fn config_reads_the_policy_and_refuses_bad_values() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        Config::from_lookup(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    };
    let c = env(&[
        ("TIERKV_SEMANTIC", "on"),
        ("TIERKV_SEMANTIC_NAMESPACES", "support, faq"),
    ])
    .unwrap();
    assert!(c.semantic.on_for("model|dtype=float32|kv=auto|faq"));
    assert!(!c.semantic.on_for("model|dtype=float32|kv=auto|chat"));
    assert!(!Config::default().semantic.on_for("x"), "off by default");
    let e = env(&[("TIERKV_SEMANTIC_MIN_SIMILARITY", "1.5")]).unwrap_err();
    assert_eq!(e.var, "TIERKV_SEMANTIC_MIN_SIMILARITY");
    assert!(env(&[("TIERKV_SEMANTIC_PROMPTS", "0")]).is_err());
}

/// Every default is written once, in the table: setting a variable to its
/// documented default changes nothing, and the defaults semantic sharing has on
/// its own (`SemanticPolicy::default`, for direct users of the library) are the
/// table's.
#[test]
fn setting_a_variable_to_its_documented_default_changes_nothing() {
    let base = Config::default();
    for d in VARS.iter().filter(|d| d.default != "unset" && !d.default.contains('<')) {
        let c = cfg(&[(d.name, d.default)]).unwrap_or_else(|e| panic!("{}={:?}: {e}", d.name, d.default));
        assert_eq!(c, base, "{}={:?} is not the default", d.name, d.default);
    }
    assert_eq!(base.semantic, crate::semantic::SemanticPolicy::default());
}

#[test]
fn the_remote_tier_is_off_unless_a_url_is_given_and_every_remote_variable_is_checked() {
    assert!(cfg(&[]).unwrap().remote.is_none());
    let c = cfg(&[("TIERKV_REMOTE_URL", "redis://127.0.0.1:7001,127.0.0.1:7002")]).unwrap();
    let r = c.remote.clone().unwrap();
    assert_eq!(r.nodes, ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]);
    assert!(r.cluster_seeds);
    assert_eq!(r.ttl, Duration::from_secs(86_400));
    assert_eq!(c.remote_admit, crate::movement::AdmitMode::Reuse(2));
    for (var, bad) in [
        ("TIERKV_REMOTE_URL", "rediss:/h:1"),
        ("TIERKV_REMOTE_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ("TIERKV_REMOTE_TTL", "0s"),
        ("TIERKV_REMOTE_TIMEOUT", "2m"),
        ("TIERKV_REMOTE_PREFIX", "a{b}"),
        ("TIERKV_REMOTE_PREFIX", "has space"),
        ("TIERKV_REMOTE_QUEUE", "0"),
        ("TIERKV_REMOTE_PASSWORD_FILE", "/nonexistent/pass"),
    ] {
        let e = cfg(&[("TIERKV_REMOTE_URL", "redis://h:1"), (var, bad)]).unwrap_err();
        assert_eq!(e.var, var);
    }
    // A password file others may read is refused (a leaked secret is a config error).
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p");
    std::fs::write(&f, "pw\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(cfg(&[("TIERKV_REMOTE_PASSWORD_FILE", f.to_str().unwrap())]).is_err());
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let c = cfg(&[
        ("TIERKV_REMOTE_URL", "redis://h:1"),
        ("TIERKV_REMOTE_PASSWORD_FILE", f.to_str().unwrap()),
    ])
    .unwrap();
    assert_eq!(c.remote.unwrap().password.as_deref(), Some("pw"));

    // TLS: rediss://, PEM files; a key others may read, a certificate without its
    // key, or TLS files with a redis:// URL are refused.
    let c = cfg(&[("TIERKV_REMOTE_URL", "rediss://h:1")]).unwrap();
    assert!(c.remote.unwrap().uses_tls());
    let pem = d.path().join("c.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let key = d.path().join("k.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (pem, key) = (pem.to_str().unwrap(), key.to_str().unwrap());
    let with = |extra: &[(&str, &str)]| {
        let mut v = vec![("TIERKV_REMOTE_URL", "rediss://h:1")];
        v.extend_from_slice(extra);
        cfg(&v)
    };
    assert_eq!(
        with(&[
            ("TIERKV_REMOTE_TLS_CERT_FILE", pem),
            ("TIERKV_REMOTE_TLS_KEY_FILE", key)
        ])
        .unwrap_err()
        .var,
        "TIERKV_REMOTE_TLS_KEY_FILE"
    );
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let c = with(&[
        ("TIERKV_REMOTE_TLS_CA_FILE", pem),
        ("TIERKV_REMOTE_TLS_CERT_FILE", pem),
        ("TIERKV_REMOTE_TLS_KEY_FILE", key),
    ])
    .unwrap();
    assert_eq!(c.remote.unwrap().tls.key.as_deref(), Some(std::path::Path::new(key)));
    assert_eq!(
        with(&[("TIERKV_REMOTE_TLS_CERT_FILE", pem)]).unwrap_err().var,
        "TIERKV_REMOTE_TLS_KEY_FILE"
    );
    let e = cfg(&[("TIERKV_REMOTE_URL", "redis://h:1"), ("TIERKV_REMOTE_TLS_CA_FILE", pem)]).unwrap_err();
    assert_eq!(e.var, "TIERKV_REMOTE_URL");
}
