// tierkv as llama.cpp's prefix cache: a batch runner (one C++ process, libllama +
// libtierkv_cxx.a) whose prefix cache is tierkv, block by block, with every tier
// behind it (host arena shared across processes, disk when TIERKV_DISK_PATH is set).
//
//   tierkv-llama --model M.gguf --prompts FILE --out FILE [options]
//
// FILE holds one prompt per line (text, tokenized with the model's tokenizer; "\n"
// in a line stands for a newline). For each prompt, in order:
//   1. its full blocks before the last prompt token are hashed (tierkv identities,
//      under a namespace that covers everything that makes the bytes: below);
//   2. the longest run tierkv holds is loaded, verified, and imported into the
//      sequence block by block (llama_state_seq_set_data into a scratch sequence,
//      llama_memory_seq_cp into the prompt's sequence); a block that fails to load
//      or import ends the run there, and the rest is computed (never served wrong);
//   3. the rest of the prompt is decoded; every full prompt block computed here is
//      exported (llama_memory_seq_cp into the scratch sequence,
//      llama_state_seq_get_data) and stored;
//   4. --max-tokens tokens are generated greedily (stopping at end of generation).
// Output: one JSON object per prompt and line: time to first token, blocks loaded
// and stored, the generated token ids.
//
// Options: --max-tokens N (16), --block N (tokens per block, 32), --ctx N (2048),
// --threads N (2), --no-cache (tierkv off: everything computed), --flash-attn,
// --semantic (with TIERKV_SEMANTIC=1: after the exact prefix, tierkv's full reuse
// plan from a near-duplicate prompt: its runs loaded, shifted to their positions
// with llama_memory_seq_add, every other position computed; such a prompt stores
// nothing beyond its exact prefix).
//
// Namespace: "llama.cpp|<TIERKV_LLAMA_BUILD>|model sha256|K and V types|flash
// attention (V transposed or not)|block tokens|blob bytes" plus TIERKV_NAMESPACE:
// a different build, model file, cache type or layout never shares a block.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "llama.h"
#include "tierkv.h"
#include "tierkv/tierkv.hpp"

#ifndef TIERKV_LLAMA_BUILD
#define TIERKV_LLAMA_BUILD "unknown"
#endif

namespace {

struct Options {
  std::string model, prompts, out;
  int max_tokens = 16, block = 32, ctx = 2048, threads = 2;
  bool cache = true, flash_attn = false, semantic = false;
};

[[noreturn]] void die(const std::string &msg) {
  std::fprintf(stderr, "tierkv-llama: %s\n", msg.c_str());
  std::exit(2);
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--model") o.model = next();
    else if (a == "--prompts") o.prompts = next();
    else if (a == "--out") o.out = next();
    else if (a == "--max-tokens") o.max_tokens = std::stoi(next());
    else if (a == "--block") o.block = std::stoi(next());
    else if (a == "--ctx") o.ctx = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--no-cache") o.cache = false;
    else if (a == "--flash-attn") o.flash_attn = true;
    else if (a == "--semantic") o.semantic = true;
    else die("unknown option " + a);
  }
  if (o.model.empty() || o.prompts.empty() || o.out.empty()) die("--model, --prompts and --out are required");
  if (o.block <= 0 || o.ctx <= o.block) die("--block must be positive and below --ctx");
  return o;
}

std::vector<std::string> read_prompts(const std::string &path) {
  std::ifstream f(path);
  if (!f) die("cannot read " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    std::string p;
    for (size_t i = 0; i < line.size(); i++) {
      if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == 'n') {
        p += '\n';
        i++;
      } else {
        p += line[i];
      }
    }
    out.push_back(p);
  }
  return out;
}

const int kSeq = 0;      // the prompt's sequence
const int kScratch = 1;  // blocks pass through it on export and import
const int kGather = 2;   // a semantic run's source blocks, shifted to their new place

class Runner {
 public:
  Runner(const Options &o) : o_(o) {
    llama_backend_init();
    auto mp = llama_model_default_params();
    model_ = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model_) die("cannot load model " + o.model);
    vocab_ = llama_model_get_vocab(model_);
    auto cp = llama_context_default_params();
    cp.n_ctx = o.ctx;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = 3;
    cp.kv_unified = true;
    cp.n_threads = cp.n_threads_batch = o.threads;
    cp.flash_attn_type = o.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    type_k_ = cp.type_k;
    type_v_ = cp.type_v;
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) die("cannot create a llama.cpp context");
    mem_ = llama_get_memory(ctx_);
    can_shift_ = llama_memory_can_shift(mem_);
    if (o.semantic && !can_shift_) std::fprintf(stderr, "tierkv-llama: this model's KV cannot shift: --semantic is off\n");
    if (o.cache) open_cache();
  }

  ~Runner() {
    llama_free(ctx_);
    llama_model_free(model_);
  }

  std::string run(const std::string &text) {
    std::vector<llama_token> tokens = tokenize(text);
    if (tokens.size() < 2) die("a prompt needs at least two tokens");
    llama_memory_clear(mem_, true);
    auto t0 = std::chrono::steady_clock::now();
    const size_t B = o_.block;
    // Blocks before the last prompt token: its logits are always computed.
    size_t usable = (tokens.size() - 1) / B;
    size_t full = tokens.size() / B;
    rust::Vec<tierkv::Hash> hashes;
    size_t loaded = 0, stored = 0;
    if (tkv_ && full > 0) {
      std::vector<uint32_t> ids(tokens.begin(), tokens.begin() + full * B);
      hashes = tkv().hash_tokens({ids.data(), ids.size()}, {});
      loaded = import_prefix(hashes, usable);
    }
    // Semantic sharing: runs of a near-duplicate's KV at their new positions, the
    // rest (holes, blend, the last token) computed.
    size_t reused = 0;
    llama_token next;
    if (tkv_ && o_.semantic && can_shift_) {
      next = decode_with_plan(tokens, loaded * B, reused);
    } else {
      next = decode_prompt(tokens, loaded * B);
    }
    auto t1 = std::chrono::steady_clock::now();
    // Only exact KV is stored: after a reused run every later token attended
    // approximate KV, so a semantic prompt stores nothing beyond its exact prefix.
    if (tkv_ && !reused && full > loaded) stored = export_blocks(hashes, loaded, full);
    if (tkv_ && o_.semantic && !reused && full > 0) {
      std::vector<uint32_t> ids(tokens.begin(), tokens.end());
      tkv().semantic_insert({ids.data(), ids.size()});
    }
    std::vector<llama_token> outs;
    size_t pos = tokens.size();
    for (int i = 0; i < o_.max_tokens; i++) {
      outs.push_back(next);
      if (llama_vocab_is_eog(vocab_, next) || i + 1 == o_.max_tokens) break;
      next = decode_one(next, pos++);
    }
    double ttft_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    std::ostringstream js;
    js << "{\"ttft_ms\":" << ttft_ms << ",\"prompt_tokens\":" << tokens.size() << ",\"loaded_blocks\":" << loaded
       << ",\"semantic_tokens\":" << reused << ",\"stored_blocks\":" << stored << ",\"tokens\":[";
    for (size_t i = 0; i < outs.size(); i++) js << (i ? "," : "") << outs[i];
    js << "]}";
    return js.str();
  }

  std::string metrics() { return tkv_ ? std::string(tkv().metrics_text()) : std::string(); }

  // Waits for queued disk writes (a disk tier writes behind the engine).
  void flush() {
    if (tkv_ && !tkv().flush(30000)) std::fprintf(stderr, "tierkv-llama: disk writes still queued at exit\n");
  }

 private:
  tierkv::Manager &tkv() { return **tkv_; }

  std::vector<llama_token> tokenize(const std::string &text) {
    int n = -llama_tokenize(vocab_, text.c_str(), text.size(), nullptr, 0, true, false);
    std::vector<llama_token> t(n);
    if (llama_tokenize(vocab_, text.c_str(), text.size(), t.data(), n, true, false) != n) die("tokenize failed");
    return t;
  }

  llama_token argmax(int idx) {
    const float *logits = llama_get_logits_ith(ctx_, idx);
    int n = llama_vocab_n_tokens(vocab_);
    int best = 0;
    for (int i = 1; i < n; i++)
      if (logits[i] > logits[best]) best = i;
    return best;
  }

  // Decodes tokens[pos..] into the prompt's sequence; returns the first generated token.
  llama_token decode_prompt(const std::vector<llama_token> &tokens, size_t pos) {
    return decode_span(tokens, pos, tokens.size());
  }

  llama_token decode_one(llama_token t, size_t pos) {
    llama_batch batch = llama_batch_init(1, 0, 1);
    batch.n_tokens = 1;
    batch.token[0] = t;
    batch.pos[0] = pos;
    batch.n_seq_id[0] = 1;
    batch.seq_id[0][0] = kSeq;
    batch.logits[0] = true;
    if (llama_decode(ctx_, batch) != 0) die("llama_decode failed");
    llama_token next = argmax(0);
    llama_batch_free(batch);
    return next;
  }

  // Decodes tokens[from, to) into the prompt's sequence (llama.cpp needs each
  // batch to continue right after the sequence's last cell); returns the next
  // token when `to` is the prompt's end.
  llama_token decode_span(const std::vector<llama_token> &tokens, size_t from, size_t to) {
    llama_batch batch = llama_batch_init(512, 0, 1);
    int last = -1;
    while (from < to) {
      batch.n_tokens = 0;
      for (; from < to && batch.n_tokens < 512; from++) {
        int i = batch.n_tokens++;
        batch.token[i] = tokens[from];
        batch.pos[i] = from;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = kSeq;
        batch.logits[i] = from + 1 == tokens.size();
        last = i;
      }
      if (llama_decode(ctx_, batch) != 0) die("llama_decode failed");
    }
    llama_token t = to == tokens.size() && last >= 0 ? argmax(last) : 0;
    llama_batch_free(batch);
    return t;
  }

  // Semantic sharing: asks tierkv for a reuse plan after the exact prefix of
  // `exact` tokens and applies it in position order: each hole before a run is
  // computed, then the run's source blocks are loaded (verified), imported into
  // the gather sequence, cut to the run, shifted to the run's target positions
  // (llama.cpp re-rotates K by the shift at the next decode) and added to the
  // prompt; a run whose blocks fail is computed instead. The last prompt token is
  // always computed. Returns the next token; `reused` gets the tokens reused.
  llama_token decode_with_plan(const std::vector<llama_token> &tokens, size_t exact, size_t &reused) {
    std::vector<uint32_t> ids(tokens.begin(), tokens.end());
    tierkv::SemanticPlan plan = tkv().semantic_lookup({ids.data(), ids.size()}, exact);
    if (plan.reason != TIERKV_SEMANTIC_ACCEPTED) return decode_prompt(tokens, exact);
    const size_t B = o_.block, n = tokens.size();
    size_t cur = exact;
    for (const auto &run : plan.runs) {
      size_t s0 = run.source, t0 = run.target;
      size_t len = std::min<size_t>(run.len, t0 < n - 1 ? n - 1 - t0 : 0);  // never the last token
      if (len == 0 || t0 < cur) continue;
      size_t b0 = s0 / B, b1 = (s0 + len - 1) / B + 1;
      if (b1 > plan.source_hashes.size() || b1 - b0 > kStagingBlocks) continue;
      std::vector<uint64_t> slots(b1 - b0);
      for (size_t i = 0; i < slots.size(); i++) slots[i] = i;
      auto codes = tkv().load_blocks({plan.source_hashes.data() + b0, slots.size()}, {slots.data(), slots.size()});
      bool ok = true;
      llama_memory_seq_rm(mem_, kGather, -1, -1);
      for (size_t i = 0; ok && i < slots.size(); i++) {
        ok = codes[i] == TIERKV_LOAD_LOADED && import_block(i);
        if (ok) llama_memory_seq_cp(mem_, kScratch, kGather, -1, -1);
        llama_memory_seq_rm(mem_, kScratch, -1, -1);
      }
      if (ok) {
        decode_span(tokens, cur, t0);  // the hole before the run
        llama_memory_seq_rm(mem_, kGather, -1, s0);
        llama_memory_seq_rm(mem_, kGather, s0 + len, -1);
        if (t0 != s0) llama_memory_seq_add(mem_, kGather, s0, s0 + len, (llama_pos)t0 - (llama_pos)s0);
        llama_memory_seq_cp(mem_, kGather, kSeq, t0, t0 + len);
        cur = t0 + len;
        reused += len;
      }
      llama_memory_seq_rm(mem_, kGather, -1, -1);
    }
    return decode_span(tokens, cur, n);
  }

  // The bytes of one block of the prompt's sequence, through the scratch sequence.
  std::vector<uint8_t> export_block(size_t b) {
    const llama_pos p0 = b * o_.block, p1 = p0 + o_.block;
    llama_memory_seq_rm(mem_, kScratch, -1, -1);
    llama_memory_seq_cp(mem_, kSeq, kScratch, p0, p1);
    std::vector<uint8_t> blob(llama_state_seq_get_size(ctx_, kScratch));
    size_t n = llama_state_seq_get_data(ctx_, blob.data(), blob.size(), kScratch);
    llama_memory_seq_rm(mem_, kScratch, -1, -1);
    blob.resize(n);
    return blob;
  }

  // Opens tierkv: the blob size of one block is measured by exporting a block of
  // a throwaway prompt, then the manager is created with it.
  void open_cache() {
    std::vector<llama_token> probe(o_.block + 1, llama_vocab_bos(vocab_));
    llama_memory_clear(mem_, true);
    decode_prompt(probe, 0);
    blob_bytes_ = export_block(0).size();
    llama_memory_clear(mem_, true);
    if (blob_bytes_ == 0) die("llama.cpp exported an empty block");
    staging_.assign(blob_bytes_ * kStagingBlocks, 0);
    char desc[256];
    llama_model_desc(model_, desc, sizeof desc);
    std::ostringstream ns;
    ns << "llama.cpp|" << TIERKV_LLAMA_BUILD << "|" << desc << "|" << std::string(tierkv::file_sha256(o_.model))
       << "|k=" << ggml_type_name(type_k_) << "|v=" << ggml_type_name(type_v_) << "|fa=" << o_.flash_attn
       << "|B=" << o_.block << "|blob=" << blob_bytes_;
    if (const char *extra = std::getenv("TIERKV_NAMESPACE")) ns << "|" << extra;
    namespace_ = ns.str();
    tkv_.emplace(tierkv::new_manager({(uint32_t)o_.block, blob_bytes_, namespace_, 0, true, false}));
    tierkv::Region r{reinterpret_cast<uint64_t>(staging_.data()), blob_bytes_, blob_bytes_};
    tkv().register_layout({&r, 1}, kStagingBlocks);
    std::fprintf(stderr, "tierkv-llama: namespace %s\n", namespace_.c_str());
  }

  // Loads and imports the longest run of the first `usable` blocks tierkv holds;
  // returns how many blocks the sequence now holds.
  size_t import_prefix(const rust::Vec<tierkv::Hash> &hashes, size_t usable) {
    auto hit = tkv().lookup({hashes.data(), usable});
    // The remote tier answers "pending" while it asks its store; this host has no
    // scheduler to come back later, so it asks again for up to 500 ms (a probe
    // takes about a round trip).
    for (int i = 0; hit.pending && i < 500; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      hit = tkv().lookup({hashes.data(), usable});
    }
    size_t done = 0;
    while (done < hit.hits) {
      size_t n = std::min<size_t>(hit.hits - done, kStagingBlocks);
      std::vector<uint64_t> slots(n);
      for (size_t i = 0; i < n; i++) slots[i] = i;
      auto codes = tkv().load_blocks({hashes.data() + done, n}, {slots.data(), n});
      for (size_t i = 0; i < n; i++) {
        bool ok = codes[i] == TIERKV_LOAD_LOADED && import_block(i);
        if (ok) llama_memory_seq_cp(mem_, kScratch, kSeq, -1, -1);
        llama_memory_seq_rm(mem_, kScratch, -1, -1);
        if (!ok) {
          // The run ends here: what follows is computed. Nothing of a failed
          // import stays in the sequence.
          llama_memory_seq_rm(mem_, kSeq, (done + i) * o_.block, -1);
          return done + i;
        }
      }
      done += n;
    }
    return done;
  }

  // Restores a staged block's cells, at their own positions, into the scratch
  // sequence (the caller copies them on and clears it).
  bool import_block(size_t slot) {
    const uint8_t *blob = staging_.data() + slot * blob_bytes_;
    llama_memory_seq_rm(mem_, kScratch, -1, -1);
    return llama_state_seq_set_data(ctx_, blob, blob_bytes_, kScratch) != 0;
  }

  // Exports and stores blocks [from, to) of the prompt's sequence.
  size_t export_blocks(const rust::Vec<tierkv::Hash> &hashes, size_t from, size_t to) {
    size_t stored = 0;
    for (size_t b = from; b < to; b += kStagingBlocks) {
      size_t n = std::min<size_t>(to - b, kStagingBlocks);
      std::vector<uint64_t> slots;
      std::vector<tierkv::Hash> hs;
      for (size_t i = 0; i < n; i++) {
        std::vector<uint8_t> blob = export_block(b + i);
        if (blob.size() != blob_bytes_) continue;  // another shape: not stored
        std::memcpy(staging_.data() + i * blob_bytes_, blob.data(), blob_bytes_);
        slots.push_back(i);
        hs.push_back(hashes[b + i]);
      }
      if (hs.empty()) continue;
      auto codes = tkv().store_blocks({hs.data(), hs.size()}, {slots.data(), slots.size()});
      for (auto c : codes) stored += c == TIERKV_STORE_STORED;
    }
    return stored;
  }

  static constexpr size_t kStagingBlocks = 64;
  Options o_;
  llama_model *model_ = nullptr;
  const llama_vocab *vocab_ = nullptr;
  llama_context *ctx_ = nullptr;
  llama_memory_t mem_ = nullptr;
  ggml_type type_k_, type_v_;
  uint64_t blob_bytes_ = 0;
  bool can_shift_ = false;
  std::vector<uint8_t> staging_;
  std::string namespace_;
  std::optional<rust::Box<tierkv::Manager>> tkv_;
};

}  // namespace

int main(int argc, char **argv) {
  Options o = parse(argc, argv);
  try {
    Runner r(o);
    std::ofstream out(o.out);
    if (!out) die("cannot write " + o.out);
    for (const auto &p : read_prompts(o.prompts)) out << r.run(p) << "\n";
    r.flush();
    std::string m = r.metrics();
    if (!m.empty()) std::ofstream(o.out + ".metrics") << m;
  } catch (const rust::Error &e) {
    die(std::string("tierkv: ") + e.what());
  }
  return 0;
}
