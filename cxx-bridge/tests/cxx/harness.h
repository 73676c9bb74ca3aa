// The C++ test harness of the tierkv cxx bridge (see src/harness.rs).
#pragma once
#include "rust/cxx.h"

namespace tierkv_test {
rust::String run_all();
}
