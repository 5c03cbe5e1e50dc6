//! sd-pipeline: txt2img, img2img and inpainting (in progress).
