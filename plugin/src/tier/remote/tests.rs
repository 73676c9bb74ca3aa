//! Remote-tier tests against real servers: Debian's `redis-server`, started by
//! `scripts/redis-cluster.sh` (a 3-master cluster, or one standalone server) in a
//! directory of the test's own. Without a server binary they are skipped, unless
//! `TIERKV_REQUIRE_REDIS=1` (CI) makes that a failure. Each test asserts that
//! nothing wrong is served and the counters say what happened.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::tier::test_util::{pattern, RedisStore as Store};

const NS: u64 = 0x5eed;
/// Two segments (K and V of a block), odd lengths.
const LENS: [usize; 2] = [5000, 3001];

/// Settings for `store` as a test uses them (short timeouts, write-through).
fn settings(store: &Store) -> RemoteSettings {
    let nodes = parse_url(&store.url).unwrap();
    RemoteSettings {
        cluster_seeds: nodes.len() > 1,
        nodes,
        password: None,
        ttl: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        queue: 64,
        prefix: "t".into(),
        tls: TlsFiles::default(),
    }
}

fn segs(h: u128) -> (Vec<u8>, Vec<u8>) {
    (pattern(h, LENS[0]), pattern(h ^ (1 << 100), LENS[1]))
}

fn ctx() -> BlockCtx {
    BlockCtx {
        namespace: NS,
        depth: 0,
        last: false,
        key: 0,
        parent: 0,
    }
}

/// A tier of its own (another machine's, to the store).
fn open(s: &RemoteSettings) -> RemoteTier {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let scope = format!("m{}", N.fetch_add(1, Ordering::Relaxed));
    RemoteTier::open(s, NS, &scope, &tracing::Dispatch::none())
}

fn put(t: &RemoteTier, keys: impl IntoIterator<Item = u128>) {
    for k in keys {
        let (a, b) = segs(k);
        assert_eq!(t.store(BlockHash(k), ctx(), &[&a, &b]).unwrap(), StoreOutcome::Stored);
    }
    assert!(t.wait_idle(Duration::from_secs(10)));
}

/// Asks until nothing is pending (a fresh node learns from its probes).
fn settled_run(t: &RemoteTier, hs: &[BlockHash]) -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = t.lookup_run(hs).unwrap();
        if n == hs.len() || !t.pending(hs[n]) {
            return n;
        }
        assert!(Instant::now() < end, "lookup still pending");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Loads `keys`, returning the outcomes; every `Loaded` block is checked byte
/// for byte.
fn load(t: &RemoteTier, keys: &[u128]) -> Vec<LoadOutcome> {
    let hs: Vec<BlockHash> = keys.iter().map(|&k| BlockHash(k)).collect();
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = keys.iter().map(|_| (vec![0; LENS[0]], vec![0; LENS[1]])).collect();
    let mut dsts: Vec<Vec<&mut [u8]>> = bufs.iter_mut().map(|(a, b)| vec![&mut a[..], &mut b[..]]).collect();
    let mut out = vec![LoadOutcome::Busy; keys.len()];
    t.load_into(&hs, NS, &mut dsts, &mut out).unwrap();
    drop(dsts);
    for ((k, o), (a, b)) in keys.iter().zip(&out).zip(&bufs) {
        if *o == LoadOutcome::Loaded {
            assert_eq!((a, b), (&segs(*k).0, &segs(*k).1), "block {k} served wrong");
        }
    }
    out
}

fn v(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[test]
fn one_machine_stores_another_finds_and_loads_through_a_cluster() {
    let Some(store) = Store::start("cluster") else { return };
    let s = settings(&store);
    let a = open(&s);
    let keys: Vec<u128> = (1..=40).map(|k| k * 0x1_0000_0001).collect();
    put(&a, keys.iter().copied());
    assert_eq!(v(&a.stats().written_blocks), 40);
    // The writer knows its blocks without asking.
    let hs: Vec<BlockHash> = keys.iter().map(|&k| BlockHash(k)).collect();
    assert_eq!(a.lookup_run(&hs).unwrap(), 40);

    // Another machine: nothing known, so the first lookup is pending, never a wait.
    let b = open(&s);
    let t0 = Instant::now();
    assert_eq!(b.lookup_run(&hs).unwrap(), 0);
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "a lookup waited on the network"
    );
    assert!(b.pending(hs[0]));
    assert_eq!(settled_run(&b, &hs), 40);
    assert!(load(&b, &keys).iter().all(|&o| o == LoadOutcome::Loaded));
    assert_eq!(v(&b.stats().read_blocks), 40);
    assert!(b.is_up() && b.status().up);
    // A block nobody stored: absent, not pending, after its probe.
    let other = [BlockHash(7)];
    assert_eq!(settled_run(&b, &other), 0);
    assert!(!b.pending(other[0]));
    assert_eq!(load(&b, &[7]), [LoadOutcome::Miss]);

    // Keys spread over the three masters (no hash tags).
    let counts: Vec<u64> = store
        .ports()
        .iter()
        .map(|p| {
            let out = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "dbsize"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    // Metrics name the tier.
    let mut r = Report::new();
    b.report(&mut r);
    let text = r.finish();
    assert!(text.contains("tierkv_tier_up{tier=\"remote\"} 1"), "{text}");
    assert!(text.contains("tierkv_remote_loads_total{result=\"hit\"} 40"), "{text}");
}

#[test]
fn a_second_writer_never_overwrites_and_ttl_is_set_and_refreshed() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let s = settings(&store);
    let a = open(&s);
    put(&a, [11]);
    let b = open(&s);
    // B stores a block A stored already: NX leaves A's value.
    put(&b, [11]);
    assert_eq!(v(&b.stats().write_exists), 1);
    assert_eq!(v(&b.stats().written_blocks), 0);
    let key = format::key("t", NS, BlockHash(11));
    let ttl: u64 = store.cli(&["ttl", &key]).parse().unwrap();
    assert!(ttl > 500 && ttl <= 600, "{ttl}");
    store.cli(&["expire", &key, "100"]);
    assert_eq!(load(&b, &[11]), [LoadOutcome::Loaded]);
    let ttl: u64 = store.cli(&["ttl", &key]).parse().unwrap();
    assert!(ttl > 500, "a hit refreshes the lifetime: {ttl}");
}

#[test]
fn flipped_bytes_in_the_store_are_caught_deleted_and_never_served() {
    let Some(store) = Store::start("cluster") else { return };
    let s = settings(&store);
    let a = open(&s);
    put(&a, [21, 22, 23]);
    let key = format::key("t", NS, BlockHash(22));
    // A payload byte, then a header byte of another block.
    store.cli(&["setrange", &key, "3000", "X"]);
    let key23 = format::key("t", NS, BlockHash(23));
    store.cli(&["setrange", &key23, "20", "Y"]);
    let b = open(&s);
    assert_eq!(
        load(&b, &[21, 22, 23]),
        [LoadOutcome::Loaded, LoadOutcome::Corrupt, LoadOutcome::Corrupt]
    );
    assert_eq!(v(&b.stats().checksum_failures), 2);
    assert_eq!(store.cli(&["exists", &key]), "0", "a bad value is deleted");
    assert_eq!(store.cli(&["exists", &key23]), "0");
    // Evicted between lookup and load: a miss.
    assert_eq!(settled_run(&b, &[BlockHash(21)]), 1);
    store.cli(&["del", &format::key("t", NS, BlockHash(21))]);
    assert_eq!(load(&b, &[21]), [LoadOutcome::Miss]);
    // Another namespace never reads these keys.
    let hs = [BlockHash(24)];
    let mut buf = (vec![0u8; LENS[0]], vec![0u8; LENS[1]]);
    let mut dsts = vec![vec![&mut buf.0[..], &mut buf.1[..]]];
    let mut out = [LoadOutcome::Busy];
    put(&a, [24]);
    b.load_into(&hs, NS + 1, &mut dsts, &mut out).unwrap();
    assert_eq!(out, [LoadOutcome::Miss]);
}

#[test]
fn a_killed_master_costs_only_its_blocks_and_nothing_blocks() {
    let Some(store) = Store::start("cluster") else { return };
    let s = settings(&store);
    let a = open(&s);
    let keys: Vec<u128> = (1..=60).map(|k| k * 0x9e37_79b9).collect();
    put(&a, keys.iter().copied());
    let dead = store.ports()[1];
    store.signal(dead, libc::SIGKILL);
    let b = open(&s);
    let t0 = Instant::now();
    let out = load(&b, &keys);
    let loaded = out.iter().filter(|&&o| o == LoadOutcome::Loaded).count();
    assert!(
        out.iter()
            .all(|&o| matches!(o, LoadOutcome::Loaded | LoadOutcome::Miss)),
        "{out:?}"
    );
    assert!((20..60).contains(&loaded), "{loaded} of 60 from the two live masters");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(v(&b.stats().read_errors) > 0);
    // A failed pipeline's leftover replies never pass for (or condemn) a block.
    assert_eq!(v(&b.stats().checksum_failures), 0);
    // Writes of blocks owned by the dead node fail and are counted; none blocks.
    let more: Vec<u128> = (100..130).collect();
    for &k in &more {
        let (x, y) = segs(k);
        let _ = b.store(BlockHash(k), ctx(), &[&x, &y]).unwrap();
    }
    assert!(b.wait_idle(Duration::from_secs(60)));
    assert!(v(&b.stats().write_errors) > 0);
    assert!(v(&b.stats().written_blocks) > 0);
}

#[test]
fn a_store_down_at_start_is_misses_then_serves_when_it_comes_up() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let port = store.ports()[0];
    let mut s = settings(&store);
    // Stop the server: the tier starts against nothing.
    store.signal(port, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    s.timeout = Duration::from_millis(200);
    let t = open(&s);
    let end = Instant::now() + Duration::from_secs(5);
    while t.status().problem.is_none() {
        assert!(Instant::now() < end, "never noticed the store is down");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!t.is_up() && !t.writable());
    let (x, y) = segs(1);
    assert_eq!(t.store(BlockHash(1), ctx(), &[&x, &y]).unwrap(), StoreOutcome::NoSpace);
    assert_eq!(t.lookup_run(&[BlockHash(1)]).unwrap(), 0);
    assert!(!t.pending(BlockHash(1)), "a down store is a miss, not a wait");
    assert_eq!(load(&t, &[1]), [LoadOutcome::Miss]);
    // The server comes back on the same port: the tier finds it by itself.
    let d = store.node_dir().join(port.to_string());
    let ok = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
        .args(["--save", "", "--pidfile", d.join("redis.pid").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    let end = Instant::now() + Duration::from_secs(10);
    while !t.is_up() {
        assert!(Instant::now() < end, "did not reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    put(&t, [1]);
    assert_eq!(load(&t, &[1]), [LoadOutcome::Loaded]);
    assert!(v(&t.stats().connect_failures) > 0);
}

#[test]
fn a_stalled_store_fills_the_queue_which_drops_and_never_blocks() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let mut s = settings(&store);
    s.queue = 2;
    s.timeout = Duration::from_millis(300);
    let t = open(&s);
    put(&t, [1]);
    let port = store.ports()[0];
    store.signal(port, libc::SIGSTOP);
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    for k in 10..30u128 {
        let (x, y) = segs(k);
        outcomes.push(t.store(BlockHash(k), ctx(), &[&x, &y]).unwrap());
    }
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "stores waited: {:?}",
        t0.elapsed()
    );
    assert!(outcomes.contains(&StoreOutcome::NoSpace));
    assert!(v(&t.stats().write_dropped) > 0);
    store.signal(port, libc::SIGCONT);
    assert!(t.wait_idle(Duration::from_secs(30)));
}

#[test]
fn managers_of_one_machine_share_what_they_learn() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let s = settings(&store);
    let d = tracing::Dispatch::none();
    let worker = RemoteTier::open(&s, NS, "one", &d);
    let scheduler = RemoteTier::open(&s, NS, "one", &d);
    let other = RemoteTier::open(&s, NS, "two", &d);
    put(&worker, [5]);
    // The scheduler knows the worker's write without asking the store.
    assert_eq!(scheduler.lookup_run(&[BlockHash(5)]).unwrap(), 1);
    assert_eq!(v(&scheduler.stats().written_blocks), 1);
    assert_eq!(other.lookup_run(&[BlockHash(5)]).unwrap(), 0);
    assert_eq!(v(&other.stats().written_blocks), 0);
}

#[test]
fn closing_against_a_stalled_store_is_bounded() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let mut s = settings(&store);
    s.queue = 64;
    s.timeout = Duration::from_secs(1);
    let t = open(&s);
    put(&t, [1]);
    let port = store.ports()[0];
    store.signal(port, libc::SIGSTOP);
    for k in 10..50u128 {
        let (x, y) = segs(k);
        let _ = t.store(BlockHash(k), ctx(), &[&x, &y]).unwrap();
    }
    // 40 writes of 1 s each over two connections would hold the close for 20 s.
    let t0 = Instant::now();
    drop(t);
    let took = t0.elapsed();
    store.signal(port, libc::SIGCONT);
    assert!(took < CLOSE_GRACE + Duration::from_secs(4), "close took {took:?}");
}

/// `redis-cli -p port args...` (no redirections followed), its output.
fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_slot_moved_mid_run_is_followed_through_ask_and_moved() {
    let Some(store) = Store::start("cluster") else { return };
    let s = settings(&store);
    let (a, b) = (open(&s), open(&s));
    let keys: Vec<u128> = (1..=24).map(|k| k * 0x9_0000_0007).collect();
    put(&a, keys.iter().copied());
    // b learns the slot map (its pooled client keeps it) before the slot moves.
    assert!(load(&b, &keys).iter().all(|&o| o == LoadOutcome::Loaded));

    let name = |k: u128| format::key(&s.prefix, NS, BlockHash(k));
    let k0 = keys[0];
    let slot = wire::slot(name(k0).as_bytes());
    let ports = store.ports();
    let from = *ports
        .iter()
        .find(|&&p| cli_at(p, &["EXISTS", &name(k0)]) == "1")
        .unwrap();
    let to = *ports.iter().find(|&&p| p != from).unwrap();
    let id = |p: u16| cli_at(p, &["CLUSTER", "MYID"]);
    let (from_id, to_id, slot_s) = (id(from), id(to), slot.to_string());
    // A block whose key is in the same slot, not yet stored.
    let k1 = (1u128 << 80..)
        .find(|&k| wire::slot(name(k).as_bytes()) == slot)
        .unwrap();

    // Mid-migration: the key is on `to`; `from` answers ASK for it.
    assert_eq!(
        cli_at(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]),
        "OK"
    );
    assert_eq!(
        cli_at(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]),
        "OK"
    );
    let to_s = to.to_string();
    let migrated = cli_at(from, &["MIGRATE", "127.0.0.1", &to_s, &name(k0), "0", "5000"]);
    assert_eq!(migrated, "OK");
    assert_eq!(load(&b, &[k0]), [LoadOutcome::Loaded]);
    // A new block of the migrating slot is written where ASK sends it.
    put(&a, [k1]);
    assert_eq!(v(&a.stats().write_errors), 0);
    assert_eq!(load(&b, &[k1]), [LoadOutcome::Loaded]);

    // The slot now belongs to `to`: MOVED, and the clients learn the new map.
    for p in &ports {
        assert_eq!(cli_at(*p, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]), "OK");
    }
    assert!(load(&b, &keys).iter().all(|&o| o == LoadOutcome::Loaded));
    assert_eq!(load(&b, &[k1]), [LoadOutcome::Loaded]);
    // A third machine finds both by probing.
    let c = open(&s);
    let hs = [BlockHash(k0), BlockHash(k1)];
    assert_eq!(settled_run(&c, &hs), 2);
    assert_eq!(
        (v(&b.stats().read_errors), v(&b.stats().checksum_failures)),
        (0, 0),
        "a redirection must never be an error or a bad block"
    );
}

#[test]
fn an_acl_user_limited_to_the_prefix_logs_in_and_a_wrong_password_is_a_store_down() {
    let Some(store) = Store::start("standalone") else {
        return;
    };
    let p = store.ports()[0];
    // The ACL line of docs/remote.md as written, for prefix `t` and a password
    // that needs escaping.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/remote.md")).unwrap();
    let line = doc
        .split('`')
        .find(|s| s.starts_with("ACL SETUSER tierkv on >PASSWORD ~prod-eu-llama3:*"))
        .expect("docs/remote.md's ACL line");
    let acl = line
        .replace(">PASSWORD", ">pa:ss@w")
        .replace("~prod-eu-llama3:*", "~t:*");
    let args: Vec<&str> = acl.split(' ').collect();
    assert_eq!(cli_at(p, &args), "OK");
    assert_eq!(cli_at(p, &["ACL", "SETUSER", "default", "off"]), "OK");

    // Credentials in the URL (percent-encoded), or the user there and the
    // password from the password file.
    let mut s = settings(&store);
    s.nodes = vec![format!("redis://tierkv:pa%3Ass%40w@127.0.0.1:{p}")];
    let t = open(&s);
    put(&t, [1, 2, 3]);
    assert_eq!(v(&t.stats().written_blocks), 3);
    let mut s2 = settings(&store);
    s2.nodes = vec![format!("redis://tierkv@127.0.0.1:{p}")];
    s2.password = Some("pa:ss@w".into());
    let u = open(&s2);
    assert!(load(&u, &[1, 2, 3]).iter().all(|&o| o == LoadOutcome::Loaded));

    // A wrong password: the store is down to this tier, said without the password.
    let mut bad = settings(&store);
    bad.nodes = vec![format!("redis://tierkv:wrong-pw@127.0.0.1:{p}")];
    let w = open(&bad);
    assert_eq!(load(&w, &[1]), [LoadOutcome::Miss]);
    assert!(!w.is_up());
    let problem = w.status().problem.unwrap_or_default();
    assert!(
        problem.contains("WRONGPASS") && !problem.contains("wrong-pw"),
        "{problem}"
    );
    assert_eq!(v(&w.stats().read_blocks), 0);
}

#[test]
fn a_tls_cluster_that_asks_for_client_certificates_serves_only_verified_peers() {
    let Some(store) = Store::start_with("cluster", &[("TIERKV_REDIS_TLS", "1")]) else {
        return;
    };
    assert!(store.url.starts_with("rediss://"), "{}", store.url);
    let certs = store.node_dir().join("tls");
    let mut s = settings(&store);
    s.tls = TlsFiles {
        ca: Some(certs.join("ca.crt")),
        cert: Some(certs.join("client.crt")),
        key: Some(certs.join("client.key")),
    };
    assert!(s.uses_tls());
    let (a, b) = (open(&s), open(&s));
    let keys: Vec<u128> = (1..=30).map(|k| k * 0x3_0000_0011).collect();
    put(&a, keys.iter().copied());
    assert_eq!(v(&a.stats().written_blocks), 30);
    let hs: Vec<BlockHash> = keys.iter().map(|&k| BlockHash(k)).collect();
    assert_eq!(settled_run(&b, &hs), 30);
    assert!(load(&b, &keys).iter().all(|&o| o == LoadOutcome::Loaded));

    // No client certificate (the server asks for one), or a server this client
    // cannot verify (the system's CAs do not sign it): the store is down to it.
    let mut no_cert = s.clone();
    no_cert.tls.cert = None;
    no_cert.tls.key = None;
    let mut unknown_ca = s.clone();
    unknown_ca.tls.ca = None;
    for bad in [no_cert, unknown_ca] {
        let t = open(&bad);
        assert_eq!(load(&t, &keys[..2]), [LoadOutcome::Miss, LoadOutcome::Miss]);
        assert!(!t.is_up(), "{:?}", bad.tls);
        assert!(t.status().problem.is_some());
        assert_eq!(v(&t.stats().read_blocks), 0);
    }
}

#[test]
fn a_replica_promoted_for_a_killed_master_serves_its_blocks_again() {
    let Some(store) = Store::start_with("cluster", &[("TIERKV_REDIS_REPLICAS", "1")]) else {
        return;
    };
    let s = settings(&store);
    let a = open(&s);
    let keys: Vec<u128> = (1..=60).map(|k| k * 0x5_0000_0003).collect();
    put(&a, keys.iter().copied());
    let ports = store.ports();
    let masters: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| cli_at(p, &["ROLE"]).starts_with("master"))
        .collect();
    assert_eq!(masters.len(), 3, "{ports:?}");
    // Every write reached its replica before a master dies (ROLE on a replica:
    // slave, master host, master port, link state, offset).
    let end = Instant::now() + Duration::from_secs(20);
    for &r in ports.iter().filter(|p| !masters.contains(p)) {
        loop {
            let role: Vec<String> = cli_at(r, &["ROLE"]).lines().map(str::to_string).collect();
            let synced = role.len() >= 4
                && role[3] == "connected"
                && cli_at(r, &["DBSIZE"]) == cli_at(role[2].parse().unwrap(), &["DBSIZE"]);
            if synced {
                break;
            }
            assert!(Instant::now() < end, "replica {r} not in sync: {role:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let b = open(&s);
    assert!(load(&b, &keys).iter().all(|&o| o == LoadOutcome::Loaded));

    let victim = *masters
        .iter()
        .find(|&&m| cli_at(m, &["DBSIZE"]).parse::<u64>().unwrap() > 0)
        .unwrap();
    store.signal(victim, libc::SIGKILL);
    // During the failover its blocks are misses (never wrong: `load` checks the
    // bytes); once its replica is master, every block loads again.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = load(&b, &keys);
        if out.iter().all(|&o| o == LoadOutcome::Loaded) {
            break;
        }
        assert!(
            out.iter()
                .all(|&o| matches!(o, LoadOutcome::Loaded | LoadOutcome::Miss)),
            "{out:?}"
        );
        assert!(Instant::now() < end, "the promoted replica never served: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(v(&b.stats().checksum_failures), 0);
    // Writers move on too: new blocks are stored on every master, the new one
    // included (a write that met the dead master is dropped and tried again).
    let fresh: Vec<u128> = (1000..1060).map(|k| k * 0x7_0000_0001).collect();
    let hs: Vec<BlockHash> = fresh.iter().map(|&k| BlockHash(k)).collect();
    let end = Instant::now() + Duration::from_secs(10);
    while a.lookup_run(&hs).unwrap() < hs.len() {
        assert!(
            Instant::now() < end,
            "writes after the failover: {}",
            v(&a.stats().write_errors)
        );
        for &k in &fresh {
            let (x, y) = segs(k);
            a.store(BlockHash(k), ctx(), &[&x, &y]).unwrap();
        }
        assert!(a.wait_idle(Duration::from_secs(10)));
    }
    assert!(load(&b, &fresh).iter().all(|&o| o == LoadOutcome::Loaded));
}
