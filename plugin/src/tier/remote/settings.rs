//! [`RemoteSettings`]: what the remote tier is told (built by `crate::config` from
//! the `TIERKV_REMOTE_*` variables), and [`parse_url`], which turns
//! `TIERKV_REMOTE_URL` into the nodes to connect to.

use std::path::PathBuf;
use std::time::Duration;

/// Files of TLS to the store (`TIERKV_REMOTE_TLS_*`); used with `rediss://`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsFiles {
    /// CAs to trust (PEM); none: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), shown when the server asks.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// The remote tier's settings.
#[derive(Clone, PartialEq)]
pub struct RemoteSettings {
    /// Seed nodes, each `redis://[user:password@]host:port` (`TIERKV_REMOTE_URL`).
    pub nodes: Vec<String>,
    /// More than one seed: a cluster. One seed: a cluster if the server says it is
    /// one (`INFO cluster`), else a standalone server.
    pub cluster_seeds: bool,
    /// Password from `TIERKV_REMOTE_PASSWORD_FILE` (one not in the URL).
    pub password: Option<String>,
    /// Lifetime of a stored block; hits refresh it (`TIERKV_REMOTE_TTL`).
    pub ttl: Duration,
    /// Connect and response timeout of every call (`TIERKV_REMOTE_TIMEOUT`).
    pub timeout: Duration,
    /// Write-behind queue bound in blocks; a full queue drops (`TIERKV_REMOTE_QUEUE`).
    pub queue: usize,
    /// Prefix of every key: one per deployment (`TIERKV_REMOTE_PREFIX`).
    pub prefix: String,
    /// TLS files (the URL's scheme says whether TLS is used).
    pub tls: TlsFiles,
}

impl RemoteSettings {
    /// Whether the store is reached over TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.nodes.first().is_some_and(|n| n.starts_with("rediss://"))
    }
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password (a URL may carry one).
        f.debug_struct("RemoteSettings")
            .field("nodes", &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
            .field("cluster_seeds", &self.cluster_seeds)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("queue", &self.queue)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Splits `redis[s]://[user:password@]host:port[,host:port...][/db]` into one URL
/// per node (each with the scheme and credentials; `rediss://` is TLS). `None`
/// when it is not of that form: another scheme, an empty host, a port that is not
/// a number, a database other than 0 with several nodes.
pub fn parse_url(url: &str) -> Option<Vec<String>> {
    let url = url.trim();
    let (scheme, rest) = match url.strip_prefix("rediss://") {
        Some(r) => ("rediss", r),
        None => ("redis", url.strip_prefix("redis://")?),
    };
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, db) = match hosts.split_once('/') {
        Some((h, d)) => (h, d),
        None => (hosts, ""),
    };
    if !db.is_empty() && db.parse::<u8>().is_err() {
        return None;
    }
    let list: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if list.len() > 1 && !db.is_empty() && db != "0" {
        return None; // a cluster has database 0 only
    }
    let mut out = Vec::with_capacity(list.len());
    for h in list {
        let (host, port) = h.rsplit_once(':')?;
        if host.is_empty() || port.parse::<u16>().ok().filter(|&p| p > 0).is_none() {
            return None;
        }
        let db = if db.is_empty() { String::new() } else { format!("/{db}") };
        out.push(format!("{scheme}://{auth}{host}:{port}{db}"));
    }
    Some(out)
}

/// One node to connect to, from a URL of [`parse_url`]'s output.
#[derive(Clone, PartialEq)]
pub struct Node {
    /// Host name or address (an IPv6 address in brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// ACL user (`AUTH user password`); none: the default user.
    pub user: Option<String>,
    /// Password; none: no `AUTH`.
    pub password: Option<String>,
    /// Database (a standalone server's; a cluster has 0 only).
    pub db: u8,
    /// TLS (`rediss://`).
    pub tls: bool,
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The node of one `redis[s]://[user:password@]host:port[/db]` URL (user and
/// password percent-decoded; `:password@` alone is the default user's).
pub fn node_of_url(url: &str) -> Option<Node> {
    let (tls, rest) = match url.strip_prefix("rediss://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("redis://")?),
    };
    let (auth, hostport) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hostport, db) = match hostport.split_once('/') {
        Some((h, "")) => (h, 0),
        Some((h, d)) => (h, d.parse().ok()?),
        None => (hostport, 0),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    let (user, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u), Some(p)),
            None => (Some(a), None),
        },
    };
    let user = match user {
        Some(u) if !u.is_empty() => Some(percent_decode(u)?),
        _ => None,
    };
    let password = match password {
        Some(p) if !p.is_empty() => Some(percent_decode(p)?),
        _ => None,
    };
    Some(Node {
        host: host.to_string(),
        port: port.parse().ok()?,
        user,
        password,
        db,
        tls,
    })
}

/// The accepted forms of `TIERKV_REMOTE_URL`, for error messages.
pub const URL_FORMS: &str = "redis://[user:password@]host:port (one server or a cluster node) or redis://host:port,host:port,... (a cluster's seed list); rediss:// for TLS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_nodes_with_their_credentials() {
        assert_eq!(parse_url("redis://127.0.0.1:7001").unwrap(), ["redis://127.0.0.1:7001"]);
        assert_eq!(
            parse_url("redis://u:p@127.0.0.1:7001,127.0.0.1:7002").unwrap(),
            ["redis://u:p@127.0.0.1:7001", "redis://u:p@127.0.0.1:7002"]
        );
        assert_eq!(parse_url("redis://h:1/2").unwrap(), ["redis://h:1/2"]);
        assert_eq!(
            parse_url("rediss://u:p@h:1,g:2").unwrap(),
            ["rediss://u:p@h:1", "rediss://u:p@g:2"]
        );
        for bad in [
            "",
            "http://h:1",
            "rediss:/h:1",
            "redis://",
            "redis://h",
            "redis://h:0",
            "redis://h:x",
            "redis://:1",
            "redis://h:1,",
            "redis://h:1,g:2/3",
            "redis://h:1/x",
        ] {
            assert!(parse_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn node_urls_give_host_port_and_decoded_credentials() {
        let n = node_of_url("redis://app:p%40ss%3Aw@10.0.0.1:7001/2").unwrap();
        assert_eq!(
            (n.host.as_str(), n.port, n.user.as_deref(), n.password.as_deref(), n.db),
            ("10.0.0.1", 7001, Some("app"), Some("p@ss:w"), 2)
        );
        let n = node_of_url("redis://:pw@h:1").unwrap();
        assert_eq!((n.user, n.password.as_deref()), (None, Some("pw")));
        let n = node_of_url("redis://[::1]:6379").unwrap();
        assert_eq!(
            (n.host.as_str(), n.port, n.password, n.tls),
            ("[::1]", 6379, None, false)
        );
        assert!(node_of_url("rediss://h:1").unwrap().tls);
        assert!(node_of_url("redis://h:1/x").is_none());
        assert!(node_of_url("redis://u:%zz@h:1").is_none());
    }

    #[test]
    fn passwords_are_never_printed() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let s = RemoteSettings {
            nodes: vec!["redis://u:secret@h:1".into()],
            cluster_seeds: false,
            password: Some("other".into()),
            ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            queue: 1,
            prefix: "p".into(),
            tls: TlsFiles::default(),
        };
        let d = format!("{s:?}");
        assert!(!d.contains("secret") && !d.contains("other"), "{d}");
    }
}
