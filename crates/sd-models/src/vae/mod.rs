//! The image autoencoders: [`AutoencoderKL`] (the Stable Diffusion VAE, diffusers layout, with tiling) and
//! [`AutoencoderTiny`] (TAESD, a small fast approximation used for previews and low-memory decoding).
//!
//! Everything here is self-contained: the VAE's residual blocks have no time embedding and its attention is a
//! single-head, group-normed self-attention, so they do not share code with the UNet's.

mod attention;
mod autoencoder_kl;
mod blocks;
mod coders;
mod config;
mod resnet;
mod tiling;
mod tiny;
mod tiny_config;

pub use autoencoder_kl::{AutoencoderKL, DiagonalGaussian};
pub use config::VaeConfig;
pub use tiling::{tiled_decode, tiled_encode, TilingConfig};
pub use tiny::{AutoencoderTiny, TinyConfig};
