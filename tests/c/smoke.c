/* A C host that includes the generated header and dlopens libtierkv.so, as an engine
 * written in C or C++ would. Built and run by tests/abi.rs (c_host_compiles_and_runs).
 * Usage: smoke /path/to/libtierkv.so SHM_DIR */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tierkv.h"

#define LOAD(name) __typeof__(&name) p_##name = (__typeof__(&name))dlsym(lib, #name); \
    if (!p_##name) { fprintf(stderr, "missing %s\n", #name); return 2; }
#define CHECK(call) do { TierkvStatus s_ = (call); if (s_ != TIERKV_STATUS_OK) { \
    fprintf(stderr, "%s -> %d: %s\n", #call, (int)s_, p_tierkv_last_error()); return 1; } } while (0)

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    LOAD(tierkv_abi_version) LOAD(tierkv_last_error) LOAD(tierkv_manager_create)
    LOAD(tierkv_manager_destroy) LOAD(tierkv_hash_tokens) LOAD(tierkv_lookup)
    LOAD(tierkv_register_layout) LOAD(tierkv_store_blocks) LOAD(tierkv_load_blocks)
    if (p_tierkv_abi_version() != TIERKV_ABI_VERSION) return 3;
    setenv("TIERKV_SHM_DIR", argv[2], 1);
    setenv("TIERKV_CPU_BYTES", "4MiB", 1);

    enum { LAYERS = 2, BLOCKS = 4, SEG = 2048, TOKENS = 16 };
    static unsigned char kv[LAYERS][BLOCKS * SEG];
    for (int l = 0; l < LAYERS; l++)
        for (int i = 0; i < BLOCKS * SEG; i++) kv[l][i] = (unsigned char)(i * 13 + l);

    TierkvManagerParams params = {0};
    params.block_tokens = TOKENS;
    params.block_bytes = LAYERS * SEG;
    TierkvManager *m = NULL;
    CHECK(p_tierkv_manager_create(&params, &m));

    TierkvRegion regions[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        regions[l].base = (uint64_t)(uintptr_t)kv[l];
        regions[l].block_stride = SEG;
        regions[l].bytes_per_block = SEG;
    }
    CHECK(p_tierkv_register_layout(m, regions, LAYERS, BLOCKS));

    uint32_t tokens[2 * TOKENS + 5];
    for (unsigned i = 0; i < sizeof tokens / sizeof tokens[0]; i++) tokens[i] = 1000 + i;
    TierkvHash h[4];
    size_t n = 0, hits = 0, loaded = 0;
    CHECK(p_tierkv_hash_tokens(m, NULL, tokens, sizeof tokens / sizeof tokens[0], h, 4, &n));
    if (n != 2) return 4;
    uint64_t ids[2] = {0, 1}, dst[2] = {2, 3};
    CHECK(p_tierkv_store_blocks(m, h, ids, 2, NULL));
    uint8_t tiers[2];
    CHECK(p_tierkv_lookup(m, h, 2, tiers, &hits));
    if (hits != 2 || tiers[0] != TIERKV_TIER_HOST) return 5;
    uint8_t res[2];
    CHECK(p_tierkv_load_blocks(m, h, dst, 2, res, &loaded));
    if (loaded != 2 || res[0] != TIERKV_LOAD_LOADED) return 6;
    for (int l = 0; l < LAYERS; l++)
        if (memcmp(kv[l], kv[l] + 2 * SEG, 2 * SEG) != 0) return 7;
    /* A bad call reports, never crashes. */
    if (p_tierkv_lookup(m, NULL, 2, NULL, &hits) != TIERKV_STATUS_INVALID_ARGUMENT) return 8;
    if (strstr(p_tierkv_last_error(), "null") == NULL) return 9;
    CHECK(p_tierkv_manager_destroy(m));
    printf("ok\n");
    return 0;
}
