use super::*;

fn hasher(algo: HashAlgo, bs: usize, ns: &str, seed: &str) -> BlockHasher {
    BlockHasher::new(algo, bs, ns, seed).unwrap()
}

/// Vectors computed by vLLM 0.32's own `hash_block_tokens`
/// (`integration/vllm/gen_hash_vectors.py`).
#[test]
fn vllm_compatible_hashes_match_vllm() {
    let vectors = include_str!("vllm_vectors.txt");
    let mut checked = 0;
    for line in vectors.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 6, "{line}");
        let algo = HashAlgo::parse(f[0]).unwrap();
        let seed = if f[1] == "None" { VLLM_DEFAULT_SEED } else { f[1] };
        let bs: usize = f[3].parse().unwrap();
        let tokens: Vec<u32> = f[4]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let want: Vec<&str> = f[5].split(',').filter(|s| !s.is_empty()).collect();
        let h = hasher(algo, bs, f[2], seed);
        let mut got = Vec::new();
        h.vllm_digests(None, &tokens, &mut got);
        let got_hex: Vec<String> = got
            .iter()
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(got_hex, want, "{}", &line[..line.len().min(80)]);
        // The 128-bit identities are the digests' first 16 bytes.
        let mut ids = Vec::new();
        assert!(h.hash_blocks(None, &tokens, &mut ids));
        assert_eq!(ids, got.iter().map(|d| digest_to_hash(d)).collect::<Vec<_>>());
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} vectors");
}

/// The native identity is fixed forever: these values must never change.
#[test]
fn native_hash_is_stable() {
    let h = hasher(HashAlgo::Xxh3_128, 4, "", "");
    let mut out = Vec::new();
    h.hash_blocks(None, &[1, 2, 3, 4, 5, 6, 7, 8, 9], &mut out);
    assert_eq!(out.len(), 2);
    let again = {
        let mut o = Vec::new();
        hasher(HashAlgo::Xxh3_128, 4, "", "").hash_blocks(None, &[1, 2, 3, 4, 5, 6, 7, 8], &mut o);
        o
    };
    assert_eq!(out, again);
    let expected = include_str!("native_vectors.txt").trim();
    let got = format!("{:032x},{:032x}", out[0].0, out[1].0);
    assert_eq!(
        got, expected,
        "native identity changed: that breaks every persisted cache"
    );
}

#[test]
fn chain_continuation_equals_full_hash() {
    for algo in [HashAlgo::Xxh3_128, HashAlgo::XxhashCbor] {
        let h = hasher(algo, 16, "ns", "0");
        let tokens: Vec<u32> = (0..100).collect();
        let mut full = Vec::new();
        h.hash_blocks(None, &tokens, &mut full);
        let mut part = Vec::new();
        h.hash_blocks(None, &tokens[..32], &mut part);
        let parent = *part.last().unwrap();
        assert!(h.hash_blocks(Some(parent), &tokens[32..], &mut part));
        assert_eq!(full, part, "{algo:?}");
    }
    let h = hasher(HashAlgo::Sha256Cbor, 16, "", "0");
    assert!(!h.hash_blocks(Some(BlockHash(1)), &[0; 16], &mut Vec::new()));
}

#[test]
fn namespaces_and_positions_separate_identities() {
    let a = hasher(HashAlgo::Xxh3_128, 2, "a", "");
    let b = hasher(HashAlgo::Xxh3_128, 2, "b", "");
    let (mut ha, mut hb) = (Vec::new(), Vec::new());
    a.hash_blocks(None, &[1, 2, 1, 2], &mut ha);
    b.hash_blocks(None, &[1, 2, 1, 2], &mut hb);
    assert_ne!(ha[0], hb[0]);
    // The same tokens at another position have another identity (the parent differs).
    assert_ne!(ha[0], ha[1]);
}

#[test]
fn parts_round_trip() {
    let h = BlockHash(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
    assert_eq!(BlockHash::from_parts(h.to_parts()), h);
    assert_eq!(h.to_parts()[0], 0xfedc_ba98_7654_3210);
}
