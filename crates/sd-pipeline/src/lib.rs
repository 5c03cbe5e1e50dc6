//! sd-pipeline: the Stable Diffusion algorithm as users run it, between the networks (`sd-models`), the samplers
//! (`sd-schedulers`) and the command line (`sd-cli`). Other programs embed sd-rs through this crate.
//!
//! | module | what |
//! |---|---|
//! | [`family`] | which model family a folder holds (SD1.x, SD2.x, SDXL, Turbo, inpainting) and its defaults |
//! | [`loader`] | [`loader::StableDiffusion`]: every component of a model folder, loaded per device/dtype |
//! | [`loras`] | `<lora:name:weight>` tags, LoRA files merged at load, A1111 `Lora hashes` |
//! | [`prompt`] | prompt text → conditioning tensors (A1111 syntax, chunking, clip skip, SDXL pooled embeds) |
//! | [`control`] | ControlNet units: loading beside the UNet, resize modes, guess mode, summed residuals |
//! | [`ip_adapter`] | IP-Adapter: adapter files and image encoders loaded beside the UNet, image prompts → tokens |
//! | [`canny`] | Canny edge maps as OpenCV computes them (the `canny` preprocessor) |
//! | [`request`] | [`request::GenerationRequest`]: everything one generation needs, validated |
//! | [`sd3`] | Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`): MMDiT, CLIP-L + CLIP-G + T5, flow matching |
//! | [`sd3_memory`] | whether an SD3 model's weights fit in memory (staged or all loaded), and the flag that makes them fit |
//! | [`sd3_prompt`] | SD3 prompts with A1111 syntax: weighted, chunked CLIP-L + CLIP-G, T5 with the syntax stripped |
//! | [`generate`] | encode prompts → prepare latents → loop { UNet, guidance, sampler step } → decode |
//! | [`hires`] | A1111's hires fix: first pass, enlarge (image or latents), img2img second pass |
//! | [`step_cache`] | opt-in step caching (`--cache deepcache`): full UNet every N steps, shallow passes between |
//! | [`stage`] | one loop run that starts from given latents, stops at a switch point or returns latents |
//! | [`refiner`] | the SDXL refiner after the base model (diffusers' ensemble of experts) |
//! | [`output`] | file names, PNG writing with parameters and disclosure labels |
//! | [`init_image`] | img2img / inpainting images and masks → tensors, as diffusers' `VaeImageProcessor` |
//! | [`offload`] | `--offload model|sequential`: components moved to the GPU only while they run, or streamed layer by layer |
//! | [`oom`] | out-of-memory errors as one line: what was asked, what the GPU has, which option helps |
//! | [`memory`] | whether a full-image VAE decode fits in memory, else tiled decoding |
//! | [`hash_cache`] | A1111's "Model hash", cached by path, size and mtime |
//! | [`single_file`] | `.safetensors`/`.ckpt` checkpoints loaded through the `sd convert` mapping (cached) |

pub mod canny;
pub mod control;
pub mod family;
pub mod generate;
pub mod hash_cache;
pub mod hires;
pub mod init_image;
pub mod ip_adapter;
pub mod loader;
pub mod loras;
pub mod memory;
pub mod offload;
pub mod oom;
pub mod output;
pub mod prompt;
pub mod refiner;
pub mod request;
pub mod sd3;
pub mod sd3_memory;
pub mod sd3_prompt;
pub mod single_file;
pub mod stage;
pub mod step_cache;
