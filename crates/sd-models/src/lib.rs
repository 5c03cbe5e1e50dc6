//! sd-models: the networks of Stable Diffusion, built from diffusers/transformers `config.json` files and loaded
//! from their state dicts without renaming.
//!
//! | module | what |
//! |---|---|
//! | [`nn`] | Linear, Conv2d, GroupNorm, LayerNorm, Embedding, activations — loaded through `sd_core::VarBuilder` |
//! | [`attention`] | scaled-dot-product attention shared by CLIP, the UNet transformer blocks and the VAE mid-block |
//! | [`clip`] | CLIP BPE tokenizer, CLIPTextModel / CLIPTextModelWithProjection, CLIP vision tower (with projection: IP-Adapter's image encoder) |
//! | [`unet`] | UNet2DConditionModel (SD1.x, SD2.x, SDXL, inpainting, LCM) from its config |
//! | [`controlnet`] | ControlNetModel: the UNet's contracting half with a conditioning embedding and zero convolutions; from a diffusers folder or a single file |
//! | [`t5`] | T5EncoderModel and its Unigram tokenizer (SD3's third text encoder) |
//! | [`transformer_sd3`] | SD3Transformer2DModel (MMDiT of SD3 / SD3.5, incl. qk RMS norm and dual attention) |
//! | [`vae`] | AutoencoderKL (encode/decode, tiling) and AutoencoderTiny (TAESD) |
//! | [`safety`] | StableDiffusionSafetyChecker |
//! | [`stream`] | `--offload sequential`: `nn` layers copy their weights to the GPU per operation while a guard is alive |
//! | [`ip_adapter`] | IP-Adapter: original weight files, image projections (base, full, plus) and the decoupled cross-attention hook |
//! | [`convert`] | single-file (LDM) checkpoints, single-file ControlNets and single-file SD3 / SD3.5 → diffusers state dicts, and the safe pickle reader |

pub mod attention;
pub mod clip;
pub mod controlnet;
pub mod convert;
pub mod ip_adapter;
pub mod nn;
pub mod safety;
pub mod stream;
pub mod t5;
pub mod transformer_sd3;
pub mod unet;
pub mod vae;
