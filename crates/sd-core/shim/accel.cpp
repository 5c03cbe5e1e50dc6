// A small C ABI over the parts of LibTorch's C++ API that tch does not wrap: the build configuration of the
// library actually loaded (its version is in there, the header files next to it may differ), the accelerator's
// allocator statistics (peak memory), and the CUDA driver's description of each GPU.
//
// Every function catches C++ exceptions and reports failure through its return value: an exception must never
// unwind into Rust. Strings are copied into caller-owned buffers; the return value is the full length so the
// caller can tell when its buffer was too short.

#include <ATen/DeviceAccelerator.h>
#include <ATen/Version.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace {

size_t copy_out(const std::string& s, char* buf, size_t len) {
  if (buf != nullptr && len > 0) {
    size_t n = s.size() < len - 1 ? s.size() : len - 1;
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
  }
  return s.size();
}

thread_local std::string last_error;

// The CUDA driver API, looked up in the already loaded libcuda. Only plain C functions with stable signatures are
// used, so no CUDA header is needed to build this file and a CPU-only LibTorch builds it too.
typedef int (*cu_init_t)(unsigned int);
typedef int (*cu_device_get_t)(int*, int);
typedef int (*cu_device_get_name_t)(char*, int, int);
typedef int (*cu_device_get_attribute_t)(int*, int, int);
typedef int (*cu_device_total_mem_t)(size_t*, int);
typedef int (*cu_driver_get_version_t)(int*);
constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;

void* cuda_driver() {
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen("libcuda.so.1", RTLD_LAZY);
  return h;
}

}  // namespace

// The one error slot every shim file reports through (onednn.cpp too).
namespace sdrs_shim {
void set_last_error(const char* what) { last_error = what; }
}  // namespace sdrs_shim

extern "C" {

size_t sdrs_last_error(char* buf, size_t len) { return copy_out(last_error, buf, len); }

// `at::show_config()`: compiler, CPU capability, CUDA/cuDNN and the "Build settings" line with TORCH_VERSION.
// Returns the full length, or -1 on failure (then sdrs_last_error says why).
int64_t sdrs_show_config(char* buf, size_t len) {
  try {
    return static_cast<int64_t>(copy_out(at::show_config(), buf, len));
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

// The accelerator caching allocator's counters for one device (aggregate pool), since the process started or the
// last sdrs_reset_peak_memory, in this order: allocated, reserved, active and inactive-split bytes (current, peak
// each), then allocation retries and out-of-memory errors. `n` is the length of `out` (at least 10).
// 0 on success, -1 when there is no accelerator.
int sdrs_memory_stats(int device, int64_t* out, size_t n) {
  if (n < 10) {
    last_error = "sdrs_memory_stats needs room for 10 counters";
    return -1;
  }
  try {
    auto s = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    constexpr size_t aggregate = 0;
    const c10::CachingAllocator::Stat* stats[4] = {&s.allocated_bytes[aggregate], &s.reserved_bytes[aggregate],
                                                         &s.active_bytes[aggregate], &s.inactive_split_bytes[aggregate]};
    for (size_t i = 0; i < 4; ++i) {
      out[2 * i] = stats[i]->current;
      out[2 * i + 1] = stats[i]->peak;
    }
    out[8] = s.num_alloc_retries;
    out[9] = s.num_ooms;
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

int sdrs_reset_peak_memory(int device) {
  try {
    at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

// Free and total bytes of one device as the driver reports them. 0 on success, -1 otherwise.
int sdrs_memory_info(int device, int64_t* free_bytes, int64_t* total_bytes) {
  try {
    auto info = at::accelerator::getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = static_cast<int64_t>(info.first);
    *total_bytes = static_cast<int64_t>(info.second);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

// Name, compute capability, multiprocessors and memory of CUDA device `device` from the driver API, plus the
// driver's CUDA version (e.g. 13000). 0 on success, -1 when there is no driver or no such device.
int sdrs_cuda_device(int device, char* name, size_t name_len, int* major, int* minor, int* multiprocessors,
                     int64_t* total_bytes, int* driver_version) {
  void* h = cuda_driver();
  if (h == nullptr) {
    last_error = "libcuda.so.1 (the NVIDIA driver) cannot be loaded";
    return -1;
  }
  auto init = reinterpret_cast<cu_init_t>(dlsym(h, "cuInit"));
  auto get = reinterpret_cast<cu_device_get_t>(dlsym(h, "cuDeviceGet"));
  auto get_name = reinterpret_cast<cu_device_get_name_t>(dlsym(h, "cuDeviceGetName"));
  auto get_attr = reinterpret_cast<cu_device_get_attribute_t>(dlsym(h, "cuDeviceGetAttribute"));
  auto total_mem = reinterpret_cast<cu_device_total_mem_t>(dlsym(h, "cuDeviceTotalMem_v2"));
  auto version = reinterpret_cast<cu_driver_get_version_t>(dlsym(h, "cuDriverGetVersion"));
  if (!init || !get || !get_name || !get_attr || !total_mem || !version) {
    last_error = "libcuda.so.1 lacks a driver API function this build expects";
    return -1;
  }
  int dev = 0;
  size_t bytes = 0;
  char raw[256] = {0};
  if (init(0) != 0 || get(&dev, device) != 0 || get_name(raw, sizeof(raw) - 1, dev) != 0 ||
      get_attr(major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) != 0 ||
      get_attr(minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) != 0 ||
      get_attr(multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != 0 || total_mem(&bytes, dev) != 0 ||
      version(driver_version) != 0) {
    last_error = "the CUDA driver could not describe device " + std::to_string(device);
    return -1;
  }
  copy_out(std::string(raw), name, name_len);
  *total_bytes = static_cast<int64_t>(bytes);
  return 0;
}

}  // extern "C"
