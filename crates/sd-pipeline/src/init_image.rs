//! Turning user images into the tensors img2img and inpainting start from, as diffusers' `VaeImageProcessor`
//! does: resize to the target size (Lanczos), scale to [-1, 1]; masks to single-channel, binarised at 0.5.

use image::{imageops::FilterType, DynamicImage, GrayImage, RgbImage};
use sd_core::image_io::{rgb_to_tensor, Range};
use tch::{Device, Kind, Tensor};

/// Image, mask and masked image for inpainting, `[1, C, H, W]`.
pub struct Prepared {
    pub image: Tensor,
    pub mask: Tensor,
    pub masked: Tensor,
}

/// The init image as `[1, 3, H, W]` in [-1, 1].
pub fn prepare_init(init: &RgbImage, width: i64, height: i64, kind: Kind, device: Device) -> Tensor {
    // Pillow's Lanczos, byte for byte: diffusers' VaeImageProcessor resizes with it.
    let img = sd_core::image_io::resize(init, width as u32, height as u32, sd_core::image_io::Filter::Lanczos);
    rgb_to_tensor(&img, Range::Signed, Kind::Float, device).to_kind(kind)
}

/// Image, binarised mask (1 = repaint) and the image with the repainted region zeroed.
pub fn prepare_mask(
    init: &RgbImage,
    mask: &GrayImage,
    width: i64,
    height: i64,
    kind: Kind,
    device: Device,
) -> Prepared {
    let image = prepare_init(init, width, height, Kind::Float, device);
    let mask = if mask.width() as i64 == width && mask.height() as i64 == height {
        mask.clone()
    } else {
        sd_core::resample::lanczos_luma(mask, width as u32, height as u32).unwrap_or_else(|_| {
            DynamicImage::ImageLuma8(mask.clone())
                .resize_exact(width as u32, height as u32, FilterType::Lanczos3)
                .to_luma8()
        })
    };
    let m =
        Tensor::from_slice(mask.as_raw()).reshape([1, 1, height, width]).to_kind(Kind::Float).to_device(device) / 255.0;
    let m = m.ge(0.5).to_kind(Kind::Float);
    let masked = &image * m.lt(0.5).to_kind(Kind::Float);
    Prepared { image: image.to_kind(kind), mask: m, masked: masked.to_kind(kind) }
}
