// C++ checks of the tierkv cxx bridge, run by tests/cxx.rs under `cargo test`.
// Each check appends to `failures` instead of stopping, so one run reports all.
#include "tierkv-cxx/tests/cxx/harness.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tierkv-cxx/src/harness.rs.h"
#include "tierkv-cxx/src/lib.rs.h"
#include "tierkv.h"

namespace tierkv_test {
namespace {

std::string failures;

void check(bool ok, const std::string &what) {
  if (!ok) failures += what + "\n";
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const rust::Error &e) {
    return e.what();
  }
  return "";
}

}  // namespace

rust::String run_all() {
  failures.clear();
  constexpr uint64_t half = 4096, block = 2 * half, blocks = 8;
  std::vector<uint8_t> mem(blocks * block);
  for (size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<uint8_t>(i * 7 % 251);

  tierkv::Params p{4, block, "cxx-harness", 8, false, false};
  rust::Box<tierkv::Manager> m = tierkv::new_manager(p);
  check(m->block_tokens() == 4, "block_tokens");

  // K and V halves of each block: two regions.
  uint64_t base = reinterpret_cast<uint64_t>(mem.data());
  std::vector<tierkv::Region> regions{{base, block, half}, {base + half, block, half}};
  m->register_layout(rust::Slice<const tierkv::Region>(regions.data(), regions.size()), blocks);

  std::vector<uint32_t> tokens{1, 2, 3, 4, 5, 6, 7, 8, 9};
  rust::Vec<tierkv::Hash> h = m->hash_tokens(rust::Slice<const uint32_t>(tokens.data(), tokens.size()), {});
  check(h.size() == 2, "two full blocks hashed");
  rust::Slice<const tierkv::Hash> hs(h.data(), h.size());
  check(m->lookup(hs).hits == 0, "nothing held before the store");

  std::vector<uint64_t> src{0, 1}, dst{4, 5};
  rust::Vec<uint8_t> stored = m->store_blocks(hs, rust::Slice<const uint64_t>(src.data(), 2));
  check(stored.size() == 2 && stored[0] == TIERKV_STORE_STORED && stored[1] == TIERKV_STORE_STORED, "stored");
  tierkv::Lookup l = m->lookup(hs);
  check(l.hits == 2 && l.tiers[0] == TIERKV_TIER_HOST && l.tiers[1] == TIERKV_TIER_HOST && !l.pending, "held in the host tier");
  rust::Vec<uint8_t> loaded = m->load_blocks(hs, rust::Slice<const uint64_t>(dst.data(), 2));
  check(loaded[0] == TIERKV_LOAD_LOADED && loaded[1] == TIERKV_LOAD_LOADED, "loaded");
  check(std::memcmp(mem.data(), mem.data() + 4 * block, 2 * block) == 0, "loaded bytes equal the stored ones");

  // Errors: the same text as tierkv_last_error for the same failure.
  std::vector<uint64_t> bad{0, 99};
  std::string e = error_of([&] { m->store_blocks(hs, rust::Slice<const uint64_t>(bad.data(), 2)); });
  check(!e.empty(), "a block id out of range is an exception");
  TierkvManagerParams cp{};
  cp.block_tokens = 4;
  cp.block_bytes = block;
  cp.namespace_ = "cxx-harness";
  cp.flags = TIERKV_CREATE_NO_EXPORTER;
  TierkvManager *c = nullptr;
  check(tierkv_manager_create(&cp, &c) == TIERKV_STATUS_OK, "C ABI manager");
  TierkvRegion cr[2] = {{base, block, half}, {base + half, block, half}};
  tierkv_register_layout(c, cr, 2, blocks);
  TierkvHash ch[2] = {{h[0].lo, h[0].hi}, {h[1].lo, h[1].hi}};
  check(tierkv_store_blocks(c, ch, bad.data(), 2, nullptr) == TIERKV_STATUS_INVALID_ARGUMENT, "C ABI refuses");
  check(e == tierkv_last_error(), "what() == tierkv_last_error(): '" + e + "' vs '" + tierkv_last_error() + "'");
  tierkv_manager_destroy(c);
  std::vector<uint64_t> one{0};
  check(error_of([&] { m->store_blocks(hs, rust::Slice<const uint64_t>(one.data(), 1)); }).find("hashes and block_ids") !=
            std::string::npos,
        "lengths must agree");
  check(error_of([] { tierkv_test::guarded_panic(); }) == "internal error in tierkv: deliberate panic of the C++ harness",
        "a panic is an exception, not an abort");

  // KV events: named stores come back as one vLLM KVEventBatch.
  m->events_start(0);
  std::vector<uint64_t> keys{1001, 1002};
  m->name_blocks(hs, rust::Slice<const uint64_t>(keys.data(), 2), {});
  std::vector<uint32_t> more{10, 11, 12, 13, 14, 15, 16, 17};
  rust::Vec<tierkv::Hash> h2 = m->hash_tokens(rust::Slice<const uint32_t>(more.data(), more.size()), {});
  m->name_blocks(rust::Slice<const tierkv::Hash>(h2.data(), 2), rust::Slice<const uint64_t>(keys.data(), 2), {});
  m->store_blocks(rust::Slice<const tierkv::Hash>(h2.data(), 2), rust::Slice<const uint64_t>(src.data(), 2));
  tierkv::EventBatch b = m->take_events(4096);
  check(b.events == 2 && b.remaining == 0, "two stores, two events");
  check(b.bytes.size() > 2 && b.bytes[0] == 0x93 && b.bytes[1] == 0xcb, "msgpack [ts, events, null]");
  check(!error_of([&] { m->take_events(16); }).empty(), "a buffer below 512 bytes is refused");

  // Semantic sharing (TIERKV_SEMANTIC=1 in this test): a stored prompt is indexed
  // and planned from; an unrelated prompt gets a reason, no plan.
  {
    std::vector<uint32_t> doc(48);
    for (size_t i = 0; i < doc.size(); ++i) doc[i] = 1000 + static_cast<uint32_t>(i * 37 % 101);
    rust::Vec<tierkv::Hash> dh = m->hash_tokens(rust::Slice<const uint32_t>(doc.data(), doc.size()), {});
    std::vector<uint64_t> slots{0, 1, 2, 3, 4, 5, 6, 7};
    for (size_t b = 0; b < dh.size(); b += 8) {
      size_t n = std::min<size_t>(8, dh.size() - b);
      m->store_blocks(rust::Slice<const tierkv::Hash>(dh.data() + b, n), rust::Slice<const uint64_t>(slots.data(), n));
    }
    check(m->semantic_insert(rust::Slice<const uint32_t>(doc.data(), doc.size())), "a stored prompt is indexed");
    check(!m->semantic_insert(rust::Slice<const uint32_t>(doc.data(), 2)), "shorter than a block: not indexed");
    std::vector<uint32_t> near = doc;
    near[21] = 7;  // one token differs
    tierkv::SemanticPlan plan = m->semantic_lookup(rust::Slice<const uint32_t>(near.data(), near.size()), 0);
    check(plan.reason == TIERKV_SEMANTIC_ACCEPTED, "a near-duplicate gets a plan (reason " + std::to_string(plan.reason) + ")");
    check(!plan.runs.empty() && plan.reused_tokens > 0 && plan.source_hashes.size() == dh.size(), "the plan's runs");
    check(plan.recompute.size() % 2 == 0 && !plan.recompute.empty(), "recompute ranges cover the change");
    std::vector<uint32_t> other(48, 5);
    tierkv::SemanticPlan none = m->semantic_lookup(rust::Slice<const uint32_t>(other.data(), other.size()), 0);
    check(none.reason != TIERKV_SEMANTIC_ACCEPTED && none.runs.empty(), "an unrelated prompt: no plan");
  }

  // The engine block pool.
  rust::Vec<uint32_t> ids = m->pool_allocate(2);
  check(ids.size() == 2, "allocated");
  rust::Vec<bool> first = m->pool_register(rust::Slice<const uint32_t>(ids.data(), 2), hs);
  check(first[0] && first[1], "registered");
  rust::Vec<uint32_t> found = m->pool_find(hs);
  check(found[0] == ids[0] && found[1] == ids[1], "found");
  m->pool_free(rust::Slice<const uint32_t>(ids.data(), 2));
  rust::Vec<uint32_t> hit = m->pool_acquire_cached(hs);
  check(hit.size() == 2, "a prefix hit in the pool");
  check(m->pool_state().hits == 2, "pool counters");
  // touch: exactly the blocks find named, held or free.
  m->pool_free(rust::Slice<const uint32_t>(hit.data(), 2));
  m->pool_touch(rust::Slice<const uint32_t>(found.data(), 2));
  check(m->pool_state().hits == 4 && m->pool_state().free == m->pool_state().num_blocks - 2, "touched");
  check(!error_of([&] { m->pool_allocate(100); }).empty(), "too many blocks is an exception");
  check(m->tier_status(TIERKV_TIER_HOST).up && !m->tier_status(TIERKV_TIER_DISK).configured, "tier status");
  {
    // PQ retrieval: 1 layer, 2 KV heads of 16 dimensions, 300 tokens; token 150
    // of each head points where the all-ones query looks.
    constexpr uint32_t heads = 2, dim = 16, group = 3;
    constexpr size_t n = 300;
    std::vector<float> keys(heads * n * dim);
    for (size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t e = 0; e < dim; ++e) keys[(h * n + 150) * dim + e] = 4.0f;
    rust::Box<tierkv::PqIndex> ix = m->pq_build(rust::Slice<const float>(keys.data(), keys.size()), 1, heads, n, dim);
    check(ix->tokens() == n, "PQ index of 300 tokens");
    std::vector<float> q(heads * group * dim, 1.0f);
    tierkv::PqSelection sel = ix->topk(0, rust::Slice<const float>(q.data(), q.size()), group, 0.0);
    check(sel.offsets.size() == heads + 1 && sel.offsets[heads] == sel.tokens.size(), "a selection per KV head");
    for (uint32_t h = 0; h < heads; ++h) {
      bool found = false;
      for (uint32_t i = sel.offsets[h]; i < sel.offsets[h + 1]; ++i) found |= sel.tokens[i] == 150;
      check(found, "the planted token is selected for KV head " + std::to_string(h));
    }
    check(!error_of([&] { ix->topk(1, rust::Slice<const float>(q.data(), q.size()), group, 0.0); }).empty(),
          "a layer past the last is an exception");
    ix->append(rust::Slice<const float>(keys.data(), heads * 2 * dim), 2);
    check(ix->tokens() == n + 2, "appended tokens are indexed");
  }
  {
    // PQ from stored blocks: a token layout over the two regions (K in the
    // first, V in the second: 4 tokens x 4 heads x 64 fp32 each), six blocks of
    // known floats stored, then a gather returns each selected token's rows.
    constexpr uint32_t heads = 4, dim = 64, bt = 4, nb = 6;
    auto val = [](uint32_t kind, uint32_t t, uint32_t h, uint32_t d) {
      return static_cast<float>((kind * 7 + t * 13 + h * 31 + d) % 97) - 48.0f;
    };
    for (uint32_t t = 0; t < nb * bt; ++t)
      for (uint32_t h = 0; h < heads; ++h)
        for (uint32_t d = 0; d < dim; ++d)
          for (uint32_t kind = 0; kind < 2; ++kind) {
            float x = val(kind, t, h, d);
            std::memcpy(mem.data() + (t / bt) * block + kind * half + (((t % bt) * heads + h) * dim + d) * 4, &x, 4);
          }
    std::vector<tierkv::TokenRows> rows{{0, 1, 0, heads * dim * 4, dim * 4, heads, dim * 4, 0},
                                        {1, 0, 0, heads * dim * 4, dim * 4, heads, dim * 4, 0}};
    m->register_token_layout(rust::Slice<const tierkv::TokenRows>(rows.data(), rows.size()), 0, dim, dim, 10000.0f, true);
    std::vector<uint32_t> toks(nb * bt);
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = 50000 + static_cast<uint32_t>(i);
    rust::Vec<tierkv::Hash> ph = m->hash_tokens(rust::Slice<const uint32_t>(toks.data(), toks.size()), {});
    std::vector<uint64_t> slots{0, 1, 2, 3, 4, 5};
    m->store_blocks(rust::Slice<const tierkv::Hash>(ph.data(), ph.size()), rust::Slice<const uint64_t>(slots.data(), nb));
    std::fill(mem.begin(), mem.end(), 0);  // the engine's copy is gone
    rust::Box<tierkv::PqIndex> ix = m->pq_build_blocks(rust::Slice<const tierkv::Hash>(ph.data(), ph.size()), nb * bt);
    std::vector<float> q(heads * dim, 1.0f);
    tierkv::PqSelection sel = ix->topk(0, rust::Slice<const float>(q.data(), q.size()), 1, 1.0);
    tierkv::PqRows got = m->pq_gather(*ix, 0, sel);
    check(got.offsets.size() == heads + 1 && got.tokens.size() == sel.tokens.size(), "a row per selected token");
    bool same = got.keys.size() == got.tokens.size() * dim && got.values.size() == got.tokens.size() * dim;
    for (uint32_t h = 0; same && h < heads; ++h)
      for (uint32_t r = got.offsets[h]; r < got.offsets[h + 1]; ++r)
        for (uint32_t d = 0; d < dim; ++d)
          same &= got.keys[r * dim + d] == val(0, got.tokens[r], h, d) && got.values[r * dim + d] == val(1, got.tokens[r], h, d);
    check(same, "gathered K and V equal the stored rows");
    rust::Box<tierkv::PqIndex> of_keys = m->pq_build(rust::Slice<const float>(q.data(), q.size()), 1, heads, 1, dim);
    check(!error_of([&] { m->pq_gather(*of_keys, 0, sel); }).empty(), "an index of keys cannot gather");
  }
  check(std::string(m->metrics_text()).find("tierkv_block_ops_total") != std::string::npos, "metrics");
  {
    std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/tierkv-cxx-sha.txt";
    std::ofstream(path) << "abc";
    check(std::string(tierkv::file_sha256(path)) ==
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
          "file digest");
    std::remove(path.c_str());
    check(!error_of([&] { tierkv::file_sha256(path); }).empty(), "a missing file is an exception");
  }
  return rust::String(failures);
}

}  // namespace tierkv_test
