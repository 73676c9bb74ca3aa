//! Loads the built `libtierkv.so` with `dlopen`, as an engine does, and exposes its C
//! functions with the signatures of `plugin/include/tierkv.h`.
//!
//! The library is `TIERKV_LIB` when set, else `target/debug/libtierkv.so` (build it
//! first: `cargo build -p tierkv`; `scripts/test.sh` does).

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

/// `TierkvHash`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hash {
    /// Low half.
    pub lo: u64,
    /// High half.
    pub hi: u64,
}

/// `TierkvManagerParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Tokens per block.
    pub block_tokens: u32,
    /// Engine pool blocks.
    pub pool_blocks: u32,
    /// Bytes per block.
    pub block_bytes: u64,
    /// Namespace or null.
    pub namespace_: *const c_char,
    /// Flags.
    pub flags: u32,
}

/// `TierkvRegion`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// Address of block 0.
    pub base: u64,
    /// Bytes between blocks.
    pub block_stride: u64,
    /// Bytes per block.
    pub bytes_per_block: u64,
}

/// `TierkvManagerInfo`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Info {
    /// ABI version.
    pub abi_version: u32,
    /// Tokens per block.
    pub block_tokens: u32,
    /// Bytes per block.
    pub block_bytes: u64,
    /// Host capacity in blocks.
    pub host_capacity_blocks: u64,
    /// Host blocks now.
    pub host_blocks: u64,
    /// Exporter port.
    pub metrics_port: u16,
    /// Store decode flag.
    pub store_decode: u8,
    /// Hash algorithm code.
    pub hash_algo: u8,
}

/// Status codes.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// Invalid argument.
    pub const INVALID_ARGUMENT: i32 = 1;
    /// Bad configuration.
    pub const CONFIG: i32 = 2;
    /// No space.
    pub const NO_SPACE: i32 = 3;
    /// `TIERKV_UNAVAILABLE`.
    pub const UNAVAILABLE: i32 = 4;
    /// Insufficient blocks.
    pub const INSUFFICIENT: i32 = 5;
    /// Missing state.
    pub const STATE: i32 = 6;
    /// Buffer too small.
    pub const BUFFER_TOO_SMALL: i32 = 7;
}

/// Per-block result codes (`TIERKV_LOAD_*`, `TIERKV_STORE_*`): none is 0.
pub mod code {
    /// `TIERKV_LOAD_LOADED`.
    pub const LOADED: u8 = 1;
    /// `TIERKV_LOAD_MISS`.
    pub const MISS: u8 = 2;
    /// `TIERKV_LOAD_CORRUPT`.
    pub const CORRUPT: u8 = 3;
    /// `TIERKV_LOAD_BUSY`.
    pub const BUSY: u8 = 4;
    /// `TIERKV_LOAD_FAILED`.
    pub const LOAD_FAILED: u8 = 6;
    /// `TIERKV_STORE_STORED`.
    pub const STORED: u8 = 1;
    /// `TIERKV_STORE_FAILED`.
    pub const STORE_FAILED: u8 = 5;
}

/// `TierkvPoolState`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolState {
    /// Slots.
    pub num_blocks: u64,
    /// Free slots.
    pub free: u64,
    /// Slots holding an identity.
    pub cached: u64,
    /// Blocks allocated.
    pub allocated: u64,
    /// References released.
    pub freed: u64,
    /// Blocks reused by identity.
    pub hits: u64,
    /// Cached blocks evicted.
    pub evictions: u64,
}

/// `TierkvDiskStatus`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStatus {
    /// 1 when configured.
    pub configured: u8,
    /// 1 when serving.
    pub up: u8,
    /// 1 with O_DIRECT.
    pub direct_io: u8,
    /// Blocks on disk.
    pub blocks: u64,
    /// Capacity in blocks.
    pub capacity_blocks: u64,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Blocks kept by recovery.
    pub recovered_blocks: u64,
    /// Slots dropped by recovery.
    pub recovery_dropped: u64,
    /// Writes queued.
    pub pending_writes: u64,
    /// Slots being written.
    pub writing_blocks: u64,
    /// Free slots.
    pub free_blocks: u64,
    /// 1 when the slots add up.
    pub consistent: u8,
}

/// `TierkvHwHints`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct HwHints {
    /// 1 when NVML sees the GPU.
    pub gpu_available: u8,
    /// `TIERKV_TIER_HOST` or `TIERKV_TIER_DISK`.
    pub placement: u8,
    /// NUMA node, -1 for none.
    pub numa_node: i32,
    /// Offload budget, `u64::MAX` for unlimited.
    pub offload_rate_bytes_per_s: u64,
    /// Prefetch depth in blocks.
    pub prefetch_depth: u64,
    /// Free-block watermark.
    pub watermark_blocks: u64,
    /// Samples taken.
    pub samples: u64,
}

/// `TierkvPqParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PqParams {
    /// Fraction of the context attended.
    pub budget: f64,
    /// Sinks.
    pub sink: u32,
    /// Sub-spaces.
    pub subspaces: u32,
    /// Bits per code.
    pub bits: u32,
    /// Training sample (0: default).
    pub train_sample: u32,
}

/// `TierkvPqInfo`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PqInfo {
    /// Layers.
    pub layers: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Elements of a value row (0: an index of keys).
    pub value_dim: u32,
    /// Tokens indexed.
    pub tokens: u64,
    /// Bytes of codes and centroids.
    pub bytes: u64,
}

/// Opaque manager pointer.
pub type Mgr = *mut c_void;

macro_rules! api {
    ($($name:ident : fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The library's exports.
        pub struct Api {
            _lib: libloading::Library,
            $(
                /// The C function of the same name.
                pub $name: unsafe extern "C" fn($($arg),*) -> $ret,
            )*
        }

        impl Api {
            /// Loads the library and resolves every export.
            pub fn load() -> Self {
                let path = lib_path();
                // SAFETY: loading our own library; its initialisers are Rust statics only.
                let lib = unsafe { libloading::Library::new(&path) }
                    .unwrap_or_else(|e| panic!("cannot dlopen {}: {e} (run cargo build -p tierkv)", path.display()));
                $(
                    // SAFETY: the symbol has this signature in tierkv.h.
                    let $name = unsafe {
                        *lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes())
                            .unwrap_or_else(|e| panic!("missing export {}: {e}", stringify!($name)))
                    };
                )*
                Self { _lib: lib, $($name,)* }
            }
        }
    };
}

api! {
    tierkv_abi_version: fn() -> u32;
    tierkv_last_error: fn() -> *const c_char;
    tierkv_manager_create: fn(*const Params, *mut Mgr) -> i32;
    tierkv_manager_destroy: fn(Mgr) -> i32;
    tierkv_manager_info: fn(Mgr, *mut Info) -> i32;
    tierkv_hash_tokens: fn(Mgr, *const Hash, *const u32, usize, *mut Hash, usize, *mut usize) -> i32;
    tierkv_lookup: fn(Mgr, *const Hash, usize, *mut u8, *mut usize) -> i32;
    tierkv_register_layout: fn(Mgr, *const Region, usize, u64) -> i32;
    tierkv_store_blocks: fn(Mgr, *const Hash, *const u64, usize, *mut u8) -> i32;
    tierkv_load_blocks: fn(Mgr, *const Hash, *const u64, usize, *mut u8, *mut usize) -> i32;
    tierkv_metrics_text: fn(Mgr, *mut c_char, usize, *mut usize) -> i32;
    tierkv_disk_status: fn(Mgr, *mut DiskStatus) -> i32;
    tierkv_disk_flush: fn(Mgr, u64, *mut u8) -> i32;
    tierkv_hw_hints: fn(Mgr, *mut HwHints) -> i32;
    tierkv_register_device_layout: fn(Mgr, *const Region, usize, u64, u32) -> i32;
    tierkv_load_blocks_layerwise: fn(Mgr, *const Hash, *const u64, usize, u32, *mut u8, *mut usize, *mut *mut c_void) -> i32;
    tierkv_layer_load_wait_stream: fn(*const c_void, u32, *mut c_void) -> i32;
    tierkv_layer_load_wait: fn(*const c_void, u32) -> i32;
    tierkv_layer_load_destroy: fn(*mut c_void) -> ();
    tierkv_pool_allocate: fn(Mgr, usize, *mut u32) -> i32;
    tierkv_pool_free: fn(Mgr, *const u32, usize) -> i32;
    tierkv_pool_fork: fn(Mgr, *const u32, usize) -> i32;
    tierkv_pool_touch: fn(Mgr, *const u32, usize) -> i32;
    tierkv_pool_copy_on_write: fn(Mgr, u32, *mut u32, *mut u8) -> i32;
    tierkv_pool_register: fn(Mgr, u32, *const Hash, *mut u8) -> i32;
    tierkv_pool_acquire_cached: fn(Mgr, *const Hash, usize, *mut u32, *mut usize) -> i32;
    tierkv_pool_find: fn(Mgr, *const Hash, usize, *mut u32) -> i32;
    tierkv_pool_register_many: fn(Mgr, *const u32, *const Hash, usize, *mut u8) -> i32;
    tierkv_pool_forget: fn(Mgr, *const u32, usize, *mut usize) -> i32;
    tierkv_pool_reset_prefix_cache: fn(Mgr, *mut usize) -> i32;
    tierkv_pool_state: fn(Mgr, *mut PoolState) -> i32;
    tierkv_pool_shadow_record: fn(Mgr, u64, *const u64) -> i32;
    tierkv_events_start: fn(Mgr, usize) -> i32;
    tierkv_name_blocks: fn(Mgr, *const Hash, *const u64, *const u64, usize) -> i32;
    tierkv_take_events: fn(Mgr, *mut u8, usize, *mut usize, *mut usize, *mut usize) -> i32;
    tierkv_pq_params: fn(Mgr, *mut PqParams) -> i32;
    tierkv_pq_build: fn(Mgr, *const f32, u32, u32, usize, u32, *const PqParams, *mut *mut c_void) -> i32;
    tierkv_pq_append: fn(*const c_void, *const f32, usize) -> i32;
    tierkv_pq_topk: fn(*const c_void, u32, *const f32, u32, f64, *mut u32, usize, *mut usize) -> i32;
    tierkv_pq_info: fn(*const c_void, *mut PqInfo) -> i32;
    tierkv_pq_gather: fn(Mgr, *const c_void, u32, *const u32, *const usize, usize, *mut f32, *mut f32, *mut usize) -> i32;
    tierkv_pq_set_cache: fn(*const c_void, u64) -> i32;
    tierkv_pq_destroy: fn(*mut c_void) -> ();
}

impl Api {
    /// The calling thread's last error text.
    pub fn last_error(&self) -> String {
        // SAFETY: tierkv_last_error never returns null and the text lives until our
        // next call on this thread.
        unsafe { CStr::from_ptr((self.tierkv_last_error)()) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Where the library under test is.
pub fn lib_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TIERKV_LIB") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libtierkv.so")
}
