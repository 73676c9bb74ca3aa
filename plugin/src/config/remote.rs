//! The `TIERKV_REMOTE_*` variables, read into the remote tier's own settings
//! ([`RemoteSettings`]), defaults from the table. Unset URL: no remote tier.

use std::time::Duration;

use super::parse::{parse_duration, DURATION_FORMS};
use super::read::{int_in, or_off, Vars};
use super::ConfigError;
use crate::movement::AdmitMode;
use crate::tier::remote::{parse_url, redact, RemoteSettings, TlsFiles, URL_FORMS};

fn within(lo: Duration, hi: Duration) -> impl Fn(&str) -> Option<Duration> {
    move |s: &str| parse_duration(s).filter(|d| (lo..=hi).contains(d))
}

/// A key prefix: 1-64 printable characters without spaces or braces (a brace
/// would pin every key to one cluster slot).
fn prefix(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    ok.then(|| s.to_string())
}

/// The password in `path` (its first line), refusing a file others may read.
fn password_file(path: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o007 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// A PEM file: readable, with a PEM block in it; a private key (`secret`) also
/// not readable by others. Its contents are parsed when the tier starts.
fn pem_file(secret: bool) -> impl Fn(&str) -> Option<std::path::PathBuf> {
    move |path: &str| {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).ok()?;
        if secret && meta.permissions().mode() & 0o007 != 0 {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        text.contains("-----BEGIN ").then(|| path.into())
    }
}

/// Reads the `TIERKV_REMOTE_*` variables (every one is validated, set or not):
/// the tier's settings, `None` when `TIERKV_REMOTE_URL` is unset, and its
/// admission (movement's).
pub(super) fn read(
    v: &Vars<impl Fn(&str) -> Option<String>>,
) -> Result<(Option<RemoteSettings>, AdmitMode), ConfigError> {
    let nodes = v.get("TIERKV_REMOTE_URL", or_off(parse_url), URL_FORMS)?.flatten();
    let (queue, queue_forms) = int_in(1usize, 65536);
    let (uses, use_forms) = int_in(1u8, 15);
    let uses = v.value("TIERKV_REMOTE_ADMIT_USES", uses, &use_forms)?;
    let day = Duration::from_secs(86_400);
    let password = v
        .get(
            "TIERKV_REMOTE_PASSWORD_FILE",
            or_off(password_file),
            "a readable file holding the password on its first line, not readable by others (chmod 600)",
        )?
        .flatten();
    let ttl = v.value(
        "TIERKV_REMOTE_TTL",
        within(Duration::from_secs(1), day * 3650),
        &format!("{DURATION_FORMS}, from 1s to 3650 days"),
    )?;
    let timeout = v.value(
        "TIERKV_REMOTE_TIMEOUT",
        within(Duration::from_millis(1), Duration::from_secs(60)),
        &format!("{DURATION_FORMS}, from 1ms to 60s"),
    )?;
    let queue = v.value("TIERKV_REMOTE_QUEUE", queue, &queue_forms)?;
    let prefix = v.value(
        "TIERKV_REMOTE_PREFIX",
        prefix,
        "1-64 printable characters, no spaces or braces",
    )?;
    let admit = v.value(
        "TIERKV_REMOTE_ADMIT",
        |s| match s.to_ascii_lowercase().as_str() {
            "always" => Some(AdmitMode::Always),
            "reuse" => Some(AdmitMode::Reuse(uses)),
            _ => None,
        },
        "reuse or always",
    )?;
    let pem = "a readable PEM file";
    let tls = TlsFiles {
        ca: v
            .get("TIERKV_REMOTE_TLS_CA_FILE", or_off(pem_file(false)), pem)?
            .flatten(),
        cert: v
            .get("TIERKV_REMOTE_TLS_CERT_FILE", or_off(pem_file(false)), pem)?
            .flatten(),
        key: v
            .get(
                "TIERKV_REMOTE_TLS_KEY_FILE",
                or_off(pem_file(true)),
                "a readable PEM private key, not readable by others (chmod 600)",
            )?
            .flatten(),
    };
    if tls.cert.is_some() != tls.key.is_some() {
        let (var, with) = if tls.cert.is_some() {
            ("TIERKV_REMOTE_TLS_KEY_FILE", "TIERKV_REMOTE_TLS_CERT_FILE")
        } else {
            ("TIERKV_REMOTE_TLS_CERT_FILE", "TIERKV_REMOTE_TLS_KEY_FILE")
        };
        return Err(ConfigError {
            var,
            value: "unset".into(),
            expected: format!("set together with {with} (a client certificate and its key)"),
        });
    }
    if let Some(n) = nodes.as_ref().and_then(|n| n.first()) {
        if !n.starts_with("rediss://") && tls != TlsFiles::default() {
            return Err(ConfigError {
                var: "TIERKV_REMOTE_URL",
                value: redact(n),
                expected: "rediss:// (TLS) when TIERKV_REMOTE_TLS_* files are set".into(),
            });
        }
    }
    let settings = nodes.map(|nodes| RemoteSettings {
        cluster_seeds: nodes.len() > 1,
        nodes,
        password,
        ttl,
        timeout,
        queue,
        prefix,
        tls,
    });
    Ok((settings, admit))
}
