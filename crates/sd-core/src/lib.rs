//! sd-core: the layer every other sd-rs crate stands on.
//!
//! | module | what |
//! |---|---|
//! | [`accel`] | the loaded LibTorch's own build description (version, CUDA, cuDNN), each GPU as the driver describes it, peak GPU memory (C++ shim `shim/accel.cpp`) |
//! | [`device`] | `cpu|cuda[:N]|mps|auto` and `f32|f16|bf16|auto` choices, CPU feature detection |
//! | [`rng`] | [`rng::TorchGenerator`]: seeded noise bit-identical to `torch.randn(..., generator=torch.Generator("cpu"))` |
//! | [`weights`] | memory-mapped safetensors → tensors through a [`weights::VarBuilder`] that reports every problem at once |
//! | [`image_io`] | images ↔ NCHW tensors, loading PNG/JPEG/WebP, resizing |
//! | [`resample`] | Lanczos resizing byte-identical to Pillow's (what diffusers and A1111 resize with) |
//! | [`layout`] | channels-last (NHWC) memory order for convolution weights and activations |
//! | [`model_dir`] | finding diffusers model folders on disk or in the offline Hugging Face cache |
//! | [`onednn`] | bf16 convolutions and linear layers with weights packed once for oneDNN, residual adds and activations fused (C++ shim `shim/onednn.cpp`) |
//! | [`winograd`] | 3×3 bf16 convolutions with 16 instead of 36 products per 2×2 outputs (Winograd F(2×2, 3×3)), where measured faster than oneDNN's direct kernel |
//! | [`shared_out`] | a tensor's data pointer shared by parallel workers that write disjoint elements |
//! | [`parallel`] | parallel loops of sd-rs's own kernels on LibTorch's intra-op threads (C++ shim `shim/parallel.cpp`) |
//! | [`alloc`] | allocator tuning so activations reuse freed memory instead of fresh zeroed pages |
//! | [`atomic`] | write-to-temp-then-rename, so no reader ever sees half a file |
//! | [`hash`] | file hashes (A1111 "Model hash") |
//! | [`limits`] | every bound on input (pickle depth, zip sizes, image pixels, steps, threads…), with its reason |
//!
//! Nothing here knows about Stable Diffusion networks or samplers: those live in `sd-models` and
//! `sd-schedulers`, which depend on this crate and never the other way round.

pub mod accel;
pub mod alloc;
pub mod atomic;
pub mod device;
pub mod hash;
pub mod image_io;
pub mod layout;
pub mod limits;
pub mod model_dir;
pub mod onednn;
pub mod parallel;
pub mod resample;
pub mod rng;
pub mod shared_out;
pub mod weights;
pub mod winograd;

pub use device::{ComputeDevice, DTypeChoice};
pub use rng::{NormalKernel, TorchGenerator};
pub use weights::VarBuilder;
