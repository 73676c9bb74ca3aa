// tierkv for C++: the cxx bridge over tierkv's Manager (docs/cxx.md).
//
//   tierkv::new_manager(params)           -> rust::Box<tierkv::Manager>
//   m->hash_tokens / lookup / store_blocks / load_blocks / metrics_text / ...
//
// Every failure is a rust::Error exception whose what() is the text
// tierkv_last_error() gives for the same failure; a panic inside tierkv is one
// too ("internal error in tierkv: ..."), never an abort.
#pragma once
#include "rust/cxx.h"
#include "tierkv-cxx/src/lib.rs.h"
