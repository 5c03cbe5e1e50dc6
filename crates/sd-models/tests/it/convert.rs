//! Single-file conversion against diffusers 0.42.1: every tensor of every fixture checkpoint (fixtures/convert,
//! made by scripts/fixtures/gen_60_convert.py) must come out with diffusers' name and bit-identical float32 bytes
//! (sha256 compared), from .safetensors and from .ckpt. Tolerance: exact.

use sd_models::convert::{self, Component, ConvertOptions, Converted, Family};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures")).to_path_buf()
}

fn file(name: &str) -> PathBuf {
    fixtures().join("convert").join(name)
}

fn opts(model: &str) -> ConvertOptions {
    ConvertOptions { config_dir: Some(fixtures().join("models").join(model)), ..Default::default() }
}

fn sha(t: &Tensor) -> String {
    let t = t.to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut buf = vec![0u8; n * 4];
    t.copy_data_u8(&mut buf, n);
    Sha256::digest(&buf).iter().map(|b| format!("{b:02x}")).collect()
}

type Expected = BTreeMap<String, BTreeMap<String, (Vec<i64>, String)>>;

fn expected(case: &str) -> Expected {
    let p = file(&format!("expected_{case}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("expected JSON")
}

/// transformers 5 writes CLIPTextModel without `text_model.`; the converter keeps the hub (transformers 4) prefix.
fn normalise(comp: &str, name: &str) -> String {
    if comp == "text_encoder" {
        name.strip_prefix("text_model.").unwrap_or(name).to_string()
    } else {
        name.to_string()
    }
}

fn compare(conv: &Converted, exp: &Expected, what: &str) {
    let parts: [(&str, &Vec<(String, Tensor)>); 4] = [
        ("unet", &conv.unet),
        ("vae", &conv.vae),
        ("text_encoder", &conv.text_encoder),
        ("text_encoder_2", &conv.text_encoder_2),
    ];
    for (comp, tensors) in parts {
        let Some(want) = exp.get(comp) else {
            assert!(tensors.is_empty(), "{what}: unexpected {comp} with {} tensors", tensors.len());
            continue;
        };
        let got: BTreeMap<String, &Tensor> = tensors.iter().map(|(n, t)| (normalise(comp, n), t)).collect();
        assert_eq!(got.len(), tensors.len(), "{what}/{comp}: duplicate names");
        let want_names: Vec<&String> = want.keys().collect();
        let got_names: Vec<&String> = got.keys().collect();
        assert_eq!(got_names, want_names, "{what}/{comp}: tensor names differ from diffusers'");
        for (name, (shape, hash)) in want {
            let t = got[name];
            assert_eq!(&t.size(), shape, "{what}/{comp}/{name}: shape");
            assert_eq!(&sha(t), hash, "{what}/{comp}/{name}: values differ from diffusers'");
        }
    }
}

fn convert_file(name: &str, o: &ConvertOptions) -> Converted {
    let src = convert::open(&file(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    convert::convert_checkpoint(src.as_ref(), o).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn sd1_safetensors_and_ckpt_match_diffusers() {
    let c = convert_file("sd1.safetensors", &opts("sd1"));
    assert_eq!(c.family, Family::Sd1);
    assert!(!c.inpainting);
    compare(&c, &expected("sd1"), "sd1.safetensors");
    let ignored: Vec<&str> = c.ignored.iter().map(|(k, _)| k.as_str()).collect();
    assert!(ignored.contains(&"alphas_cumprod"), "{ignored:?}");
    assert!(ignored.contains(&"cond_stage_model.transformer.text_model.embeddings.position_ids"));
    assert!(c.unknown.is_empty());

    let c = convert_file("sd1.ckpt", &opts("sd1"));
    compare(&c, &expected("sd1_ckpt"), "sd1.ckpt");
    assert!(c.ignored.iter().any(|(k, _)| k == "model_ema.decay"));
    assert!(c.ignored.iter().filter(|(k, _)| k.starts_with("model_ema.diffusion_model")).count() > 100);
}

#[test]
fn sd1_ckpt_ema_extraction_matches_diffusers() {
    let mut o = opts("sd1");
    o.ema = true;
    o.only = Some(convert::Only::Unet);
    let c = convert_file("sd1.ckpt", &o);
    compare(&c, &expected("sd1_ckpt_ema"), "sd1.ckpt --ema");
    assert!(c.ignored.iter().any(|(k, r)| k.starts_with("model.diffusion_model.") && r.contains("EMA")));
    // A file without EMA weights refuses --ema.
    let src = convert::open(&file("sd1.safetensors")).expect("open");
    let err = convert::convert_checkpoint(src.as_ref(), &o).err().expect("--ema without EMA must fail");
    assert!(format!("{err:#}").contains("EMA"), "{err:#}");
}

#[test]
fn sd2_open_clip_matches_diffusers() {
    for name in ["sd2.safetensors", "sd2.ckpt"] {
        let c = convert_file(name, &opts("sd2"));
        assert_eq!(c.family, Family::Sd2, "{name}");
        compare(&c, &expected("sd2"), name);
        // the 4th OpenCLIP layer (past num_hidden_layers = 3) and the projection are left out, with reasons
        assert!(c
            .ignored
            .iter()
            .any(|(k, _)| k == "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight"));
        assert!(c.ignored.iter().any(|(k, _)| k == "cond_stage_model.model.text_projection"));
        assert!(c.ignored.iter().any(|(k, _)| k == "cond_stage_model.model.logit_scale"));
    }
}

#[test]
fn sdxl_two_text_encoders_match_diffusers() {
    for name in ["sdxl.safetensors", "sdxl.ckpt"] {
        let c = convert_file(name, &opts("sdxl"));
        assert_eq!(c.family, Family::Sdxl, "{name}");
        compare(&c, &expected("sdxl"), name);
        assert!(c.unknown.is_empty() && !c.text_encoder_2.is_empty());
    }
}

/// The refiner keeps only the OpenCLIP-bigG-shaped encoder, under `conditioner.embedders.0.model.` (diffusers'
/// `text_encoder_2`; there is no `text_encoder`). The tiny file has layers_per_block 2 and 2 transformer layers per
/// block, and 10 text layers so that diffusers' own marker key (`...resblocks.9...`) calls it `xl_refiner`.
#[test]
fn sdxl_refiner_matches_diffusers() {
    let exp = expected("sdxl-refiner");
    assert!(!exp.contains_key("text_encoder"));
    let explicit = ConvertOptions { family: Some(Family::SdxlRefiner), ..opts("sdxl-refiner") };
    // The canonical refiner config has layers_per_block 2 like the tiny one, so names come out the same without it.
    let cases = [
        ("auto", opts("sdxl-refiner")),
        ("--family sdxl-refiner", explicit),
        ("canonical configs", ConvertOptions::default()),
    ];
    for (what, o) in cases {
        let c = convert_file("sdxl-refiner.safetensors", &o);
        assert_eq!(c.family, Family::SdxlRefiner, "{what}");
        compare(&c, &exp, what);
        assert!(c.unknown.is_empty(), "{what}: {:?}", c.unknown);
        let ignored: Vec<&str> = c.ignored.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ignored, ["conditioner.embedders.0.model.logit_scale"], "{what}");
    }
}

/// `sd convert` of the refiner writes the folder diffusers' `save_pretrained` writes: same model_index.json
/// (StableDiffusionXLImg2ImgPipeline, no first text encoder/tokenizer, requires_aesthetics_score) and configs.
#[test]
fn sdxl_refiner_written_folder_is_what_diffusers_writes() {
    let tiny = fixtures().join("models").join("sdxl-refiner");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .expect("json")
    };
    let vocab = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.sd-data/bpe_simple_vocab_16e6.txt.gz"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = convert::open(&file("sdxl-refiner.safetensors")).expect("open");
    for (what, config_dir) in [("config dir", Some(tiny.clone())), ("canonical", None)] {
        let out = tmp.path().join(what);
        let o = ConvertOptions { config_dir: config_dir.clone(), ..Default::default() };
        let plan = convert::plan_checkpoint(src.as_ref(), None, &o).expect("plan");
        let wopts = convert::writer::WriteOptions {
            dtype: None,
            overwrite: false,
            config_dir,
            vocab: Some(vocab.to_path_buf()),
            pipeline: true,
        };
        convert::writer::write_folder(&plan, &[src.as_ref()], &out, &wopts, |_, _, _| {}).expect("write");
        assert_eq!(
            read(&out.join("model_index.json")),
            read(&tiny.join("model_index.json")),
            "{what}: model_index.json"
        );
        assert!(!out.join("text_encoder").exists() && !out.join("tokenizer").exists(), "{what}");
        let tok = read(&out.join("tokenizer_2/tokenizer_config.json"));
        assert_eq!(tok["pad_token"], "!", "{what}");
        if what == "config dir" {
            for f in
                ["unet/config.json", "vae/config.json", "text_encoder_2/config.json", "scheduler/scheduler_config.json"]
            {
                assert_eq!(read(&out.join(f)), read(&tiny.join(f)), "{what}: {f}");
            }
        }
        let te2 = read(&out.join("text_encoder_2/config.json"));
        assert_eq!(te2["architectures"], serde_json::json!(["CLIPTextModelWithProjection"]), "{what}");
        let exp = expected("sdxl-refiner");
        let path = out.join("text_encoder_2/model.safetensors");
        let vb = sd_core::VarBuilder::from_safetensors(&[path], Kind::Float, Device::Cpu).expect("open written file");
        for (name, (shape, hash)) in &exp["text_encoder_2"] {
            assert_eq!(&sha(&vb.get(shape, name).expect("get")), hash, "{what}: text_encoder_2/{name} after writing");
        }
        vb.finish("text_encoder_2", &[]).expect("nothing but diffusers' tensors");
    }
}

#[test]
fn inpaint_unet_only_file_matches_diffusers() {
    for name in ["sd1-inpaint-unet.safetensors", "sd1-inpaint-unet.ckpt"] {
        let c = convert_file(name, &opts("sd1-inpaint"));
        assert!(c.inpainting, "{name}: 9 input channels = inpainting");
        compare(&c, &expected("sd1-inpaint-unet"), name);
    }
}

#[test]
fn standalone_vae_and_vae_override_match_diffusers() {
    let c = convert_file("vae.safetensors", &opts("sdxl"));
    compare(&c, &expected("vae"), "vae.safetensors");

    // --vae: the SD1 checkpoint keeps its UNet/text encoder, the VAE comes from the override file.
    let main = convert::open(&file("sd1.safetensors")).expect("open");
    let vae = convert::open(&file("vae.safetensors")).expect("open");
    let c = convert::convert_with_vae(main.as_ref(), Some(vae.as_ref()), &opts("sd1")).expect("convert");
    let mut exp = expected("sd1");
    exp.insert("vae".into(), expected("vae")["vae"].clone());
    compare(&c, &exp, "sd1 + --vae");
    assert!(c.ignored.iter().any(|(k, r)| k.starts_with("first_stage_model.") && r.contains("--vae")));
}

#[test]
fn family_detection_and_canonical_configs_without_config_dir() {
    // Without --config-dir the canonical configs are patched from shapes; the tiny UNet does not match SD1's
    // layer count, but the family, in_channels and text-encoder layer count must be read from the weights.
    let src = convert::open(&file("sd2.ckpt")).expect("open");
    let plan = convert::plan_checkpoint(src.as_ref(), None, &ConvertOptions::default()).expect("plan");
    assert_eq!(plan.family, Family::Sd2);
    // global_step 875000 = SD2-base: epsilon (diffusers' heuristic)
    assert_eq!(plan.prediction_type, "epsilon");
    assert_eq!(plan.configs[&Component::TextEncoder]["num_hidden_layers"], 3);
    assert_eq!(plan.configs[&Component::TextEncoder]["hidden_size"], 16);
    assert_eq!(plan.configs[&Component::Unet]["cross_attention_dim"], 16);
    let src = convert::open(&file("sd2.safetensors")).expect("open");
    let plan = convert::plan_checkpoint(src.as_ref(), None, &ConvertOptions::default()).expect("plan");
    assert_eq!(plan.prediction_type, "v_prediction", "SD2 without global_step defaults to v-prediction");
    let src = convert::open(&file("sd1-inpaint-unet.safetensors")).expect("open");
    let plan = convert::plan_checkpoint(src.as_ref(), None, &ConvertOptions::default()).expect("plan");
    assert!(plan.inpainting);
    assert_eq!(plan.configs[&Component::Unet]["in_channels"], 9);
    // The refiner: its only text encoder is `text_encoder_2`, and the canonical refiner configs take the widths
    // (cross-attention = text width, pooled text + 5 time ids) and depth from the weights.
    let src = convert::open(&file("sdxl-refiner.safetensors")).expect("open");
    let plan = convert::plan_checkpoint(src.as_ref(), None, &ConvertOptions::default()).expect("plan");
    assert_eq!(plan.family, Family::SdxlRefiner);
    assert_eq!(plan.prediction_type, "epsilon");
    assert!(!plan.configs.contains_key(&Component::TextEncoder));
    let (unet, te2) = (&plan.configs[&Component::Unet], &plan.configs[&Component::TextEncoder2]);
    assert_eq!(unet["cross_attention_dim"], 4);
    assert_eq!(unet["projection_class_embeddings_input_dim"], 4 + 5 * 4);
    assert_eq!(unet["addition_embed_type"], "text_time");
    assert_eq!(te2["num_hidden_layers"], 10);
    assert_eq!(te2["hidden_size"], 4);
    assert_eq!(te2["projection_dim"], 4);
    assert_eq!(plan.scheduler["_class_name"], "EulerDiscreteScheduler");
}

#[test]
fn ckpt_views_shared_storage_and_strides() {
    let src = convert::open(&file("views.ckpt")).expect("open");
    let text = std::fs::read_to_string(file("views.json")).expect("views.json");
    let want: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(src.global_step(), Some(7));
    for name in ["t", "row", "cols", "base", "half"] {
        let t = src.load(name).expect("load");
        let shape: Vec<i64> = serde_json::from_value(want[format!("{name}.shape")].clone()).expect("shape");
        assert_eq!(t.size(), shape, "{name}");
        let vals: Vec<f32> = serde_json::from_value(want[name].clone()).expect("values");
        let got: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("vec");
        assert_eq!(got, vals, "{name}");
    }
    assert_eq!(src.kind("half"), Some(Kind::Half));
}

#[test]
fn written_folder_loads_back_under_the_same_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("sdxl-converted");
    let src = convert::open(&file("sdxl.ckpt")).expect("open");
    let o = opts("sdxl");
    let plan = convert::plan_checkpoint(src.as_ref(), None, &o).expect("plan");
    let wopts = convert::writer::WriteOptions {
        dtype: Some(Kind::Float),
        overwrite: false,
        config_dir: o.config_dir.clone(),
        vocab: None,
        pipeline: true,
    };
    let mut seen = 0;
    convert::writer::write_folder(&plan, &[src.as_ref()], &out, &wopts, |done, total, _| {
        seen = done;
        assert!(done <= total);
    })
    .expect("write");
    assert_eq!(seen, plan.items.len());
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .expect("json")
    };
    let tiny_index = fixtures().join("models/sdxl/model_index.json");
    assert_eq!(read(&out.join("model_index.json")), read(&tiny_index), "model_index.json as diffusers writes it");
    let exp = expected("sdxl");
    for (comp, file_name) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
        ("text_encoder_2", "model.safetensors"),
    ] {
        let path = out.join(comp).join(file_name);
        let vb = sd_core::VarBuilder::from_safetensors(&[path], Kind::Float, Device::Cpu).expect("open written file");
        for (name, (shape, hash)) in &exp[comp] {
            let stored = if comp == "text_encoder" { format!("text_model.{name}") } else { name.clone() };
            let t = vb.get(shape, &stored).expect("get");
            assert_eq!(&sha(&t), hash, "{comp}/{stored} after writing");
        }
        vb.finish(comp, &[]).expect("every written tensor is one diffusers expects, none missing");
    }
    // nothing but the destination in the parent folder (temp folder renamed away)
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("e").file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // refuses to overwrite without the flag
    let err = convert::writer::write_folder(&plan, &[src.as_ref()], &out, &wopts, |_, _, _| {}).expect_err("exists");
    assert!(format!("{err:#}").contains("--overwrite"));
}

#[test]
fn tokenizer_from_real_vocabulary() {
    let vocab = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.sd-data/bpe_simple_vocab_16e6.txt.gz"));
    assert!(vocab.exists(), "{} is missing: run `cargo xtask setup`", vocab.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    convert::tokenizer::write_clip_tokenizer(vocab, tmp.path(), "!").expect("write");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("vocab.json")).expect("vocab")).expect("json");
    let v = v.as_object().expect("object");
    assert_eq!(v.len(), 49408);
    assert_eq!(v["<|endoftext|>"], 49407);
    assert_eq!(v["<|startoftext|>"], 49406);
    assert_eq!(v["!"], 0);
    assert_eq!(v["a</w>"], 320); // openai/clip-vit-large-patch14
    let cfg = std::fs::read_to_string(tmp.path().join("tokenizer_config.json")).expect("cfg");
    assert!(cfg.contains("\"pad_token\": \"!\""));
    let merges = std::fs::read_to_string(tmp.path().join("merges.txt")).expect("merges");
    assert_eq!(merges.lines().count(), 48895);
}
