//! Block identity: chained hashes of full blocks of tokens.
//!
//! Core types: [`BlockHash`] (the 128-bit identity every tier keys on), [`HashAlgo`]
//! (which function computes it) and [`BlockHasher`] (a configured hasher for one
//! namespace and block size).
//!
//! Workflow:
//! 1. A manager builds one [`BlockHasher`] from its config (algorithm, namespace,
//!    block size).
//! 2. [`BlockHasher::hash_blocks`] walks the full blocks of a token sequence; each
//!    block's identity is `H(parent, tokens, extra_keys)`, so a block's identity pins
//!    down every token before it:
//!
//! ```text
//!   tokens:  [t0 .. t15][t16 .. t31][t32 .. t40]     block_size = 16
//!   hashes:  h0=H(root,b0) h1=H(h0,b1)  (partial: no identity)
//! ```
//! 3. Tiers and the pool's prefix index look identities up; a lookup stops at the
//!    first absent block, so a hit is always a prefix.
//!
//! The native algorithm (`xxh3_128`) is fixed forever: seed [`NATIVE_SEED`], input
//! `parent.to_le_bytes() ++ namespace_digest.to_le_bytes() ++ tokens as u32 LE`,
//! root parent `xxh3_128_with_seed(b"tierkv-root-v1", NATIVE_SEED)` and namespace
//! digest `xxh3_128_with_seed(namespace, NATIVE_SEED)`. It is stable across
//! processes, restarts and machines (little-endian on every platform).
//!
//! The vLLM-compatible algorithms (`sha256_cbor`, `xxhash_cbor`) reproduce vLLM
//! 0.32's `hash_block_tokens` byte for byte: `H(cbor((parent, tuple(tokens),
//! extra_keys)))` with the root parent `H(cbor(seed))`, where `seed` is
//! `PYTHONHASHSEED` when set and `"vllm-none-hash"` otherwise. vLLM picks a random
//! seed for `xxhash_cbor` when `PYTHONHASHSEED` is unset, so identities only match
//! when it is set. The namespace, when not empty, is passed as `extra_keys =
//! (namespace,)` on every block.

mod cbor;

use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_seed};

/// Seed of the native identity hash ("tierkv" in ASCII, version 1).
pub const NATIVE_SEED: u64 = 0x7469_6572_6b76_0001;

/// The seed vLLM derives its root hash from when `PYTHONHASHSEED` is unset.
pub const VLLM_DEFAULT_SEED: &str = "vllm-none-hash";

/// The identity of one full block: 128 bits. For `sha256_cbor`, the first 16 bytes
/// of the digest (read big-endian); for the other algorithms the whole digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// The two 64-bit halves, low first (the C ABI's representation).
    pub fn to_parts(self) -> [u64; 2] {
        [self.0 as u64, (self.0 >> 64) as u64]
    }

    /// Rebuilds a hash from [`BlockHash::to_parts`].
    pub fn from_parts(parts: [u64; 2]) -> Self {
        BlockHash(u128::from(parts[0]) | (u128::from(parts[1]) << 64))
    }

    /// The identity folded to the 64-bit key eviction policies and admission use
    /// (the two halves xor-ed; both are uniformly distributed).
    pub fn fold64(self) -> u64 {
        (self.0 as u64) ^ ((self.0 >> 64) as u64)
    }
}

/// Which function computes block identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgo {
    /// The native algorithm (default).
    Xxh3_128,
    /// vLLM's `sha256_cbor`.
    Sha256Cbor,
    /// vLLM's `xxhash_cbor`.
    XxhashCbor,
}

impl HashAlgo {
    /// Parses a `TIERKV_HASH` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "xxh3_128" => Some(Self::Xxh3_128),
            "sha256_cbor" => Some(Self::Sha256Cbor),
            "xxhash_cbor" => Some(Self::XxhashCbor),
            _ => None,
        }
    }

    /// The name a user writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Xxh3_128 => "xxh3_128",
            Self::Sha256Cbor => "sha256_cbor",
            Self::XxhashCbor => "xxhash_cbor",
        }
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256Cbor => Sha256::digest(bytes).to_vec(),
            Self::XxhashCbor | Self::Xxh3_128 => xxh3_128(bytes).to_be_bytes().to_vec(),
        }
    }
}

/// A configured identity function for one namespace and block size.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    algo: HashAlgo,
    block_size: usize,
    namespace: String,
    ns_digest: u128,
    native_root: u128,
    vllm_root: Vec<u8>,
}

impl BlockHasher {
    /// Builds a hasher. `vllm_seed` is the seed of vLLM's root hash (see the module
    /// docs); it is ignored by the native algorithm. Returns `None` if `block_size`
    /// is zero.
    pub fn new(algo: HashAlgo, block_size: usize, namespace: &str, vllm_seed: &str) -> Option<Self> {
        if block_size == 0 {
            return None;
        }
        let mut seed_cbor = Vec::new();
        cbor::Value::Text(vllm_seed).encode(&mut seed_cbor);
        Some(Self {
            algo,
            block_size,
            namespace: namespace.to_string(),
            ns_digest: xxh3_128_with_seed(namespace.as_bytes(), NATIVE_SEED),
            native_root: xxh3_128_with_seed(b"tierkv-root-v1", NATIVE_SEED),
            vllm_root: algo.digest(&seed_cbor),
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// Appends the identity of every full block of `tokens` to `out`, chained from
    /// `parent` (`None`: the sequence starts at token 0). A trailing partial block
    /// has no identity. Continuing from a parent is supported for the 128-bit
    /// algorithms only (a `sha256_cbor` identity is truncated); for `sha256_cbor`
    /// with a parent, returns `false` and appends nothing.
    pub fn hash_blocks(&self, parent: Option<BlockHash>, tokens: &[u32], out: &mut Vec<BlockHash>) -> bool {
        match self.algo {
            HashAlgo::Xxh3_128 => {
                self.hash_native(parent, tokens, out);
                true
            }
            HashAlgo::Sha256Cbor if parent.is_some() => false,
            _ => {
                let parent = parent.map(|p| p.0.to_be_bytes().to_vec());
                let mut digests = Vec::new();
                self.vllm_digests(parent, tokens, &mut digests);
                out.extend(digests.iter().map(|d| digest_to_hash(d)));
                true
            }
        }
    }

    fn hash_native(&self, parent: Option<BlockHash>, tokens: &[u32], out: &mut Vec<BlockHash>) {
        let mut parent = parent.map_or(self.native_root, |p| p.0);
        let mut buf = Vec::with_capacity(32 + 4 * self.block_size);
        out.reserve(tokens.len() / self.block_size);
        for block in tokens.chunks_exact(self.block_size) {
            buf.clear();
            buf.extend_from_slice(&parent.to_le_bytes());
            buf.extend_from_slice(&self.ns_digest.to_le_bytes());
            for t in block {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            parent = xxh3_128_with_seed(&buf, NATIVE_SEED);
            out.push(BlockHash(parent));
        }
    }

    /// vLLM's full digests (32 bytes for `sha256_cbor`, 16 for `xxhash_cbor`) of the
    /// full blocks of `tokens`, chained from `parent` (vLLM's root when `None`).
    /// Only meaningful for the vLLM-compatible algorithms.
    pub fn vllm_digests(&self, parent: Option<Vec<u8>>, tokens: &[u32], out: &mut Vec<Vec<u8>>) {
        let mut parent = parent.unwrap_or_else(|| self.vllm_root.clone());
        let mut buf = Vec::with_capacity(64 + 5 * self.block_size);
        for block in tokens.chunks_exact(self.block_size) {
            buf.clear();
            let items: Vec<cbor::Value> = block.iter().map(|&t| cbor::Value::Uint(u64::from(t))).collect();
            let ns = [cbor::Value::Text(&self.namespace)];
            let extra = if self.namespace.is_empty() {
                cbor::Value::Null
            } else {
                cbor::Value::Array(&ns)
            };
            let tuple = [cbor::Value::Bytes(&parent), cbor::Value::Array(&items), extra];
            cbor::Value::Array(&tuple).encode(&mut buf);
            parent = self.algo.digest(&buf);
            out.push(parent.clone());
        }
    }
}

/// The 128-bit identity of a vLLM digest: its first 16 bytes, big-endian.
pub fn digest_to_hash(digest: &[u8]) -> BlockHash {
    let mut b = [0u8; 16];
    let n = digest.len().min(16);
    b[..n].copy_from_slice(&digest[..n]);
    BlockHash(u128::from_be_bytes(b))
}

#[cfg(test)]
mod tests;
