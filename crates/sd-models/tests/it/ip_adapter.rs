//! IP-Adapter pieces against transformers / diffusers (fixtures/ip_adapter, from
//! scripts/fixtures/gen_94_ip_adapter.py): the CLIP image processor at the encoder's size, the
//! CLIPVisionModelWithProjection image encoder (`image_embeds`, `hidden_states[-2]`), and each adapter's image
//! projection (base `ImageProjection`, full-face, plus resampler) read from the ORIGINAL file layout. Tolerances:
//! pixels within 1e-6, encoder outputs and tokens within 1e-5 (f32, measured worst printed).

use sd_core::image_io::{self, Range};
use sd_models::clip::image_processor::{ClipImageProcessor, ResizeTo};
use sd_models::clip::ClipVisionModelWithProjection;
use sd_models::ip_adapter::{IpAdapter, ProjectionKind};
use sd_models::unet::UNet2DConditionModel;
use sd_test_support::fixtures;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    fixtures().join("ip_adapter")
}

fn read(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(name)).unwrap().into_iter().collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn encoder() -> ClipVisionModelWithProjection {
    ClipVisionModelWithProjection::load(&dir().join("models/image_encoder"), Kind::Float, Device::Cpu).unwrap()
}

#[test]
fn processor_and_image_encoder_match_transformers() {
    let r = read("encoder.safetensors");
    let enc = encoder();
    let s = enc.config().image_size;
    let proc = ClipImageProcessor { size: ResizeTo::ShortestEdge(s), crop: (s, s), ..Default::default() };
    let pic = image_io::load_rgb(&dir().join("picture.png")).unwrap();
    let pixels = proc.preprocess(&image_io::rgb_to_tensor(&pic, Range::Unit, Kind::Float, Device::Cpu)).unwrap();
    let d = max_abs(&pixels, &r["pixel_values"]);
    println!("pixel_values: max|Δ| {d:.2e}");
    assert!(d <= 1e-6);

    let out = enc.forward(&r["pixel_values"]).unwrap();
    let zeros = enc.forward(&r["pixel_values"].zeros_like()).unwrap();
    for (name, ours, theirs) in [
        ("image_embeds", &out.image_embeds, &r["image_embeds"]),
        ("hidden_states[-2]", out.penultimate().unwrap(), &r["penultimate"]),
        ("hidden_states[-1]", out.hidden_states.last().unwrap(), &r["last_hidden_state"]),
        ("hidden_states[-2] of zeros", zeros.penultimate().unwrap(), &r["zeros_penultimate"]),
    ] {
        let d = max_abs(ours, theirs);
        println!("{name}: max|Δ| {d:.2e}");
        assert!(d <= 1e-5, "{name}: {d}");
    }
}

#[test]
fn projections_from_original_files_match_diffusers() {
    let r = read("encoder.safetensors");
    let tokens = read("tokens.safetensors");
    for (key, file, kind) in [
        ("sd15_base", "ip-adapter_sd15.safetensors", ProjectionKind::Base),
        ("sd15_base", "ip-adapter_sd15.bin", ProjectionKind::Base),
        ("sd15_plus", "ip-adapter-plus_sd15.safetensors", ProjectionKind::Plus),
        ("sd15_full", "ip-adapter-full-face_sd15.safetensors", ProjectionKind::Full),
        ("sdxl_base", "ip-adapter_sdxl.safetensors", ProjectionKind::Base),
        ("sdxl_plus", "ip-adapter-plus_sdxl.safetensors", ProjectionKind::Plus),
    ] {
        let a = IpAdapter::load(&dir().join("models").join(file), Kind::Float, Device::Cpu).unwrap();
        assert_eq!(a.kind(), kind, "{file}");
        let input = if a.reads_hidden_states() { &r["penultimate"] } else { &r["image_embeds"] };
        let ours = a.project(input).unwrap();
        let d = max_abs(&ours, &tokens[key]);
        println!("{file}: tokens {:?}, max|Δ| {d:.2e}", ours.size());
        assert!(d <= 1e-5, "{file}: {d}");
    }
}

#[test]
fn adapters_bind_to_their_own_base_model_only() {
    let models = fixtures().join("models");
    let mut sd1 = UNet2DConditionModel::load(&models.join("sd1/unet"), Kind::Float, Device::Cpu).unwrap();
    let mut xl = UNet2DConditionModel::load(&models.join("sdxl/unet"), Kind::Float, Device::Cpu).unwrap();
    let load = |f: &str| IpAdapter::load(&dir().join("models").join(f), Kind::Float, Device::Cpu).unwrap();
    load("ip-adapter_sd15.safetensors").bind(&sd1.attention_sites(), 16).unwrap();
    load("ip-adapter_sdxl.safetensors").bind(&xl.attention_sites(), 32).unwrap();
    let err = load("ip-adapter_sdxl.safetensors").bind(&sd1.attention_sites(), 16).unwrap_err();
    assert!(format!("{err:#}").contains("cross_attention_dim is 16"), "{err:#}");
    // Right width, wrong layer count: the SD1 adapter's tokens are 16 wide, a UNet with SDXL's layers is not SD1.
    let err = load("ip-adapter_sd15.safetensors").bind(&xl.attention_sites(), 16).unwrap_err();
    assert!(format!("{err:#}").contains("cross-attention layers"), "{err:#}");
}

#[test]
fn files_that_are_not_adapters_are_refused_with_the_expected_layout() {
    let err = match IpAdapter::load(&dir().join("models/image_encoder/model.safetensors"), Kind::Float, Device::Cpu) {
        Ok(_) => panic!("an image encoder is not an adapter"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("is not an IP-Adapter file") && err.contains("image_proj"), "{err}");
    let err = match IpAdapter::load(&dir().join("picture.png"), Kind::Float, Device::Cpu) {
        Ok(_) => panic!("a picture is not an adapter"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("neither a safetensors file nor a PyTorch zip"), "{err}");
    let err = match ClipVisionModelWithProjection::load(&dir().join("models"), Kind::Float, Device::Cpu) {
        Ok(_) => panic!("not an encoder folder"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("config.json is missing"), "{err}");
}
