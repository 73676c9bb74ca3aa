//! [`Conn`]: one synchronous connection to the store, a standalone server or a
//! cluster (the `redis` crate's cluster client follows MOVED/ASK and refreshes
//! its slot map by itself), with the four commands the tier uses. Every call is
//! bounded by the settings' timeout; nothing here retries for long.

use redis::cluster::{ClusterClientBuilder, ClusterConnection};
use redis::{ConnectionLike, IntoConnectionInfo, RedisResult};

use super::settings::RemoteSettings;

/// A connection to a standalone server or to a cluster.
pub enum Conn {
    /// One server.
    Single(redis::Connection),
    /// A cluster (connections to its nodes, opened as keys lead there).
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    /// Connects as `s` says; one seed is a cluster when the server says so.
    pub fn open(s: &RemoteSettings) -> RedisResult<Self> {
        if s.cluster_seeds || s.nodes.len() > 1 {
            return Self::cluster(s);
        }
        let mut info = s.nodes[0].as_str().into_connection_info()?;
        if let Some(p) = &s.password {
            let r = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(r);
        }
        let mut c = redis::Client::open(info)?.get_connection_with_timeout(s.timeout)?;
        c.set_read_timeout(Some(s.timeout))?;
        c.set_write_timeout(Some(s.timeout))?;
        let about: String = redis::cmd("INFO").arg("cluster").query(&mut c)?;
        if about.contains("cluster_enabled:1") {
            return Self::cluster(s);
        }
        Ok(Self::Single(c))
    }

    fn cluster(s: &RemoteSettings) -> RedisResult<Self> {
        let mut b = ClusterClientBuilder::new(s.nodes.iter().map(String::as_str))
            .connection_timeout(s.timeout)
            .response_timeout(s.timeout)
            // A dead node is a miss now, not a wait: two quick tries.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if let Some(p) = &s.password {
            b = b.password(p.clone());
        }
        let c = b.build()?.get_connection()?;
        c.set_read_timeout(Some(s.timeout))?;
        c.set_write_timeout(Some(s.timeout))?;
        Ok(Self::Cluster(Box::new(c)))
    }

    fn con(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Single(c) => c,
            Self::Cluster(c) => &mut **c,
        }
    }

    /// Whether each key exists, in one pipeline (routed per key in a cluster).
    pub fn exists(&mut self, keys: &[String]) -> RedisResult<Vec<bool>> {
        match self {
            Self::Single(c) => {
                let mut p = redis::pipe();
                keys.iter().for_each(|k| {
                    p.cmd("EXISTS").arg(k);
                });
                p.query(c)
            }
            Self::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                keys.iter().for_each(|k| {
                    p.cmd("EXISTS").arg(k);
                });
                p.query(c)
            }
        }
    }

    /// `SET key value NX EX ttl`: whether it was stored (false: the key exists,
    /// written by another node of the fleet, and is left as it is).
    pub fn set_nx(&mut self, key: &str, value: &[u8], ttl_s: u64) -> RedisResult<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_s)
            .query(self.con())?;
        Ok(r.is_some())
    }

    /// `GETEX key EX ttl`: the value, its lifetime refreshed (a hit keeps it).
    pub fn get_ex(&mut self, key: &str, ttl_s: u64) -> RedisResult<Option<Vec<u8>>> {
        redis::cmd("GETEX").arg(key).arg("EX").arg(ttl_s).query(self.con())
    }

    /// `GETEX key EX ttl` for each key, in one pipeline.
    pub fn get_ex_many(&mut self, keys: &[String], ttl_s: u64) -> RedisResult<Vec<Option<Vec<u8>>>> {
        match self {
            Self::Single(c) => {
                let mut p = redis::pipe();
                keys.iter().for_each(|k| {
                    p.cmd("GETEX").arg(k).arg("EX").arg(ttl_s);
                });
                p.query(c)
            }
            Self::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                keys.iter().for_each(|k| {
                    p.cmd("GETEX").arg(k).arg("EX").arg(ttl_s);
                });
                p.query(c)
            }
        }
    }

    /// `DEL key` (a value that did not verify).
    pub fn del(&mut self, key: &str) -> RedisResult<()> {
        redis::cmd("DEL").arg(key).exec(self.con())
    }
}

/// Whether `e` means the connection (not one key) is unusable: reconnect.
pub fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}
