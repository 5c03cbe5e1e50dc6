// LibTorch's intra-op thread pool (OpenMP in the PyTorch wheel's build) for sd-rs's own CPU kernels. Between two
// LibTorch operations its worker threads spin-wait for the next one; a kernel that ran on a second pool (rayon)
// competed with that spinning for the same cores. Running the kernel's loop through `at::parallel_for` uses the
// threads that are already awake.
//
// The loop body is a Rust callback (`body(ctx, begin, end)`), which never unwinds (the Rust side catches panics);
// C++ exceptions from LibTorch are caught here and reported through `sdrs_last_error` (accel.cpp).

#include <ATen/Parallel.h>

#include <cstdint>
#include <exception>

namespace sdrs_shim {
void set_last_error(const char* what);
}

extern "C" {

int sdrs_parallel_for(int64_t n, int64_t grain, void (*body)(void*, int64_t, int64_t), void* ctx) {
  try {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
    return 0;
  } catch (const std::exception& e) {
    sdrs_shim::set_last_error(e.what());
    return -1;
  }
}

}  // extern "C"
