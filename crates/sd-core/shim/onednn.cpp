// Convolutions and linear layers through LibTorch's oneDNN operators with weights packed once, for bf16 inference
// on the CPU. tch reaches only the `aten::` operators; `at::conv2d` / `at::linear` hand oneDNN a plain weight, and
// oneDNN re-lays it out into its blocked format on every call. The `mkldnn::` operators below (the ones PyTorch's
// inductor uses when it freezes a CPU graph) accept a weight already in that format and can apply an activation
// to the kernel's output as they write it.
//
// Tensors cross the C ABI as `at::Tensor*`, which is what tch's `C_tensor` is; a returned tensor is heap-allocated
// and owned by the caller (tch frees it). Every function catches C++ exceptions, stores the message for
// `sdrs_last_error` (accel.cpp) and returns -1: an exception must never unwind into Rust.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sdrs_shim {
void set_last_error(const char* what);
}

namespace {

// Looked up once per operator (a `static` at each call site); the handle stays valid for the process.
c10::OperatorHandle op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

c10::IValue optional_tensor(const at::Tensor* t) { return t == nullptr ? c10::IValue() : c10::IValue(*t); }

c10::IValue optional_string(const char* s) { return s == nullptr ? c10::IValue() : c10::IValue(std::string(s)); }

std::vector<int64_t> pair(int64_t v) { return {v, v}; }

at::Tensor call(const c10::OperatorHandle& handle, std::vector<c10::IValue> stack) {
  handle.callBoxed(&stack);
  return stack.at(0).toTensor();
}

template <typename F>
int guarded(at::Tensor** out, F&& f) {
  try {
    *out = new at::Tensor(f());
    return 0;
  } catch (const std::exception& e) {
    sdrs_shim::set_last_error(e.what());
    return -1;
  }
}

}  // namespace

extern "C" {

// A 2-D convolution weight (O, I, k, k) re-laid out into the blocked format oneDNN picks for an input of
// `input_size` (N, C, H, W; null: oneDNN's default guess) with this padding, stride and groups (dilation 1).
int sdrs_onednn_pack_conv_weight(const at::Tensor* weight, int64_t padding, int64_t stride, int64_t groups,
                                 const int64_t* input_size, at::Tensor** out) {
  return guarded(out, [&] {
    static const c10::OperatorHandle h = op("mkldnn::_reorder_convolution_weight", "");
    c10::IValue size = input_size == nullptr ? c10::IValue() : c10::IValue(std::vector<int64_t>(input_size, input_size + 4));
    return call(h, {*weight, pair(padding), pair(stride), pair(1), groups, size});
  });
}

// y = unary(conv(x, packed) + bias): `unary` is "none", "swish", "gelu", … and `algorithm` its variant ("none" or
// "tanh" for gelu; null when it has none).
int sdrs_onednn_conv(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias, int64_t padding,
                     int64_t stride, int64_t groups, const char* unary, const char* algorithm, at::Tensor** out) {
  return guarded(out, [&] {
    static const c10::OperatorHandle h = op("mkldnn::_convolution_pointwise", "");
    return call(h, {*x, *weight, optional_tensor(bias), pair(padding), pair(stride), pair(1), groups,
                    std::string(unary), c10::List<std::optional<at::Scalar>>(), optional_string(algorithm)});
  });
}

// A linear weight (O, I) re-laid out for inputs of `rows` rows (all leading dimensions flattened; ≤ 0: oneDNN's
// default guess).
int sdrs_onednn_pack_linear_weight(const at::Tensor* weight, int64_t rows, at::Tensor** out) {
  return guarded(out, [&] {
    static const c10::OperatorHandle h = op("mkldnn::_reorder_linear_weight", "");
    return call(h, {*weight, rows > 0 ? c10::IValue(rows) : c10::IValue()});
  });
}

// y = unary(x·Wᵀ + bias) with a packed W.
int sdrs_onednn_linear(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias, const char* unary,
                       const char* algorithm, at::Tensor** out) {
  return guarded(out, [&] {
    static const c10::OperatorHandle h = op("mkldnn::_linear_pointwise", "");
    return call(h, {*x, *weight, optional_tensor(bias), std::string(unary), c10::List<std::optional<at::Scalar>>(),
                    optional_string(algorithm)});
  });
}

}  // extern "C"
