//! Single-file SD3 / SD3.5 checkpoints against diffusers (fixtures/sd3_single_file/, from
//! scripts/fixtures/gen_94_sd3_single_file.py): the tiny SD3 pipeline written in the original Stability layout, which
//! diffusers' `StableDiffusion3Pipeline.from_single_file` reads back bit-identical.
//! - conversion: every tensor equals what diffusers loads from the file (sha256 of the f32 bytes, shapes; exact),
//!   for the SD3.5-Medium-like file (qk RMS norm, dual attention, all three text encoders) and an SD3-Medium-like
//!   bare MMDiT without qk norm or text encoders;
//! - the config inferred from the shapes alone equals the pipeline's;
//! - bad files: truncated, missing or misshaped tensors, absurd block numbers, gaps — errors naming the problem.

use sd_models::convert::{self, sd3, sd3_encoders, Component, TensorSource};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_single_file"))
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

pub(crate) fn sha(t: &Tensor) -> String {
    let t = t.to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut buf = vec![0f32; n];
    t.copy_data(&mut buf, n);
    let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
    format!("{:x}", Sha256::digest(&bytes))
}

/// Every converted tensor equals diffusers' and every diffusers tensor is there (T5's tied
/// `encoder.embed_tokens.weight` aside: the file, like a transformers save, keeps only `shared.weight`).
pub(crate) fn compare(got: &BTreeMap<Component, Vec<(String, Tensor)>>, want: &Value, what: &str) -> usize {
    let mut n = 0;
    for (c, tensors) in got {
        let want = want[c.folder()].as_object().unwrap_or_else(|| panic!("{what}: no reference for {}", c.folder()));
        for (name, t) in tensors {
            let w = &want.get(name).unwrap_or_else(|| panic!("{what}: {}/{name} is not diffusers'", c.folder()));
            let shape: Vec<i64> = serde_json::from_value(w[0].clone()).unwrap();
            assert_eq!(t.size(), shape, "{what}: {}/{name} shape", c.folder());
            assert_eq!(sha(t), w[1].as_str().unwrap(), "{what}: {}/{name} differs from diffusers", c.folder());
            n += 1;
        }
        let names: Vec<&String> = tensors.iter().map(|(n, _)| n).collect();
        for name in want.keys() {
            if name != "encoder.embed_tokens.weight" {
                assert!(names.contains(&name), "{what}: {}/{name} missing", c.folder());
            }
        }
    }
    n
}

#[test]
fn sd35_medium_like_file_with_all_encoders_equals_diffusers_exactly() {
    let src = convert::open(&dir().join("sd3_tiny.safetensors")).unwrap();
    assert!(sd3::detect(&src.names()));
    let plan = sd3::plan(src.as_ref(), Some(&dir().join("config")), false).unwrap();
    assert!(plan.unknown.is_empty());
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    // the file's own CLIP-L projection is left out for the identity, as diffusers does
    assert_eq!(plan.ignored.len(), 1, "{:?}", plan.ignored);
    assert!(plan.ignored[0].0.ends_with("clip_l.transformer.text_projection.weight"));
    let got = sd3::load_tensors(src.as_ref(), &plan).unwrap();
    assert_eq!(got.len(), 5);
    let n = compare(&got, &expected()["sd3_tiny"], "sd3_tiny");
    assert!(n > 150, "{n}");
}

#[test]
fn config_inferred_from_the_shapes_equals_the_pipelines() {
    let src = convert::open(&dir().join("sd3_tiny.safetensors")).unwrap();
    let plan = sd3::plan(src.as_ref(), None, false).unwrap();
    assert!(plan.config_origin.is_none());
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("config/transformer/config.json")).unwrap()).unwrap();
    let got = &plan.configs[&Component::Transformer];
    for field in [
        "patch_size",
        "in_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "out_channels",
        "pos_embed_max_size",
        "dual_attention_layers",
        "qk_norm",
    ] {
        assert_eq!(got[field], want[field], "{field}");
    }
    // The sample size is not in the weights: SD3's 128 (1024 px) unless a config says otherwise.
    assert_eq!(got["sample_size"], 128);
    let l = &plan.configs[&Component::TextEncoder];
    assert_eq!((l["hidden_size"].as_i64(), l["projection_dim"].as_i64()), (Some(8), Some(8)));
    let g = &plan.configs[&Component::TextEncoder2];
    assert_eq!((g["hidden_size"].as_i64(), g["projection_dim"].as_i64()), (Some(12), Some(24)));
    let t5 = &plan.configs[&Component::TextEncoder3];
    let t5_want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("config/text_encoder_3/config.json")).unwrap())
            .unwrap();
    for field in ["d_model", "d_ff", "d_kv", "num_heads", "num_layers", "vocab_size", "relative_attention_num_buckets"]
    {
        assert_eq!(t5[field], t5_want[field], "t5 {field}");
    }
    // without a T5 tokenizer to copy, the plan says how to supply one
    assert!(plan.notes.iter().any(|n| n.contains("tokenizer_3")), "{:?}", plan.notes);
}

#[test]
fn sd3_medium_like_bare_mmdit_without_text_encoders() {
    let src = convert::open(&dir().join("sd3_plain.safetensors")).unwrap();
    assert_eq!(sd3::transformer_prefix(&src.names()), Some(""));
    let plan = sd3::plan(src.as_ref(), Some(&dir().join("plain_config")), false).unwrap();
    assert_eq!(plan.configs[&Component::Transformer]["qk_norm"], Value::Null);
    assert_eq!(plan.components(), vec![Component::Vae, Component::Transformer]);
    let notes = plan.notes.join("\n");
    assert!(notes.contains("CLIP-L") && notes.contains("CLIP-G") && notes.contains("T5"), "{notes}");
    let got = sd3::load_tensors(src.as_ref(), &plan).unwrap();
    compare(&got, &expected()["sd3_plain"], "sd3_plain");
    // No qk norm: the shapes do not give the head width, and this model's (4) is not SD3's 64.
    let err = sd3::plan(src.as_ref(), None, false).unwrap_err().to_string();
    assert!(err.contains("head") && err.contains("--config-dir"), "{err}");
    // A config that describes another model is refused by field.
    let err = sd3::plan(src.as_ref(), Some(&dir().join("config")), false).unwrap_err().to_string();
    assert!(err.contains("does not describe") && err.contains("num_layers"), "{err}");
}

/// The real file's names and shapes, editable: the lies a file can tell, without writing files.
struct Shapes(BTreeMap<String, Vec<i64>>);

impl Shapes {
    fn of_tiny() -> Self {
        let src = convert::open(&dir().join("sd3_tiny.safetensors")).unwrap();
        Self(src.names().into_iter().map(|n| (n.clone(), src.shape(&n).unwrap())).collect())
    }
}

impl TensorSource for Shapes {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.0.get(name).cloned()
    }
    fn kind(&self, _: &str) -> Option<Kind> {
        Some(Kind::Float)
    }
    fn load(&self, name: &str) -> anyhow::Result<Tensor> {
        anyhow::bail!("shape-only source: {name}")
    }
    fn describe(&self) -> String {
        "lying.safetensors".into()
    }
}

fn plan_err(s: &Shapes) -> String {
    format!("{:#}", sd3::plan(s, Some(&dir().join("config")), false).unwrap_err())
}

#[test]
fn bad_truncated_and_lying_files_give_clear_errors() {
    const P: &str = "model.diffusion_model.";
    // a missing tensor is named
    let mut s = Shapes::of_tiny();
    s.0.remove(&format!("{P}joint_blocks.1.x_block.mlp.fc2.weight"));
    let e = plan_err(&s);
    assert!(e.contains("lacks 1 tensor") && e.contains("transformer_blocks.1.ff.net.2.weight"), "{e}");
    // a qkv that is not three times the width
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}joint_blocks.0.x_block.attn.qkv.weight"), vec![20, 8]);
    let e = plan_err(&s);
    assert!(e.contains("qkv") && e.contains("[3·8, 8]"), "{e}");
    // an absurd block number stops before anything is planned
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}joint_blocks.99999999999.x_block.mlp.fc2.weight"), vec![8, 8]);
    let e = plan_err(&s);
    assert!(e.contains("checkpoint block index limit of 1000"), "{e}");
    // a gap in the block numbers
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}joint_blocks.5.x_block.mlp.fc2.weight"), vec![8, 8]);
    let e = plan_err(&s);
    assert!(e.contains("without gaps"), "{e}");
    // more blocks than the transformer accepts
    let mut s = Shapes::of_tiny();
    for i in 0..200 {
        s.0.insert(format!("{P}joint_blocks.{i}.x_block.mlp.fc2.weight"), vec![8, 8]);
    }
    let e = plan_err(&s);
    assert!(e.contains("200 joint blocks") && e.contains("128"), "{e}");
    // a positional grid that is not square, and one far too large
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}pos_embed"), vec![1, 63, 8]);
    assert!(plan_err(&s).contains("not a square grid"));
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}pos_embed"), vec![1, i64::MAX / 16, 8]);
    assert!(plan_err(&s).contains("positions, more than"));
    // an odd final modulation cannot be split into shift and scale
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}final_layer.adaLN_modulation.1.bias"), vec![15]);
    assert!(plan_err(&s).contains("even first dimension"));
    // a stray tensor is refused unless allowed
    let mut s = Shapes::of_tiny();
    s.0.insert(format!("{P}joint_blocks.0.x_block.mystery.weight"), vec![8]);
    let e = plan_err(&s);
    assert!(e.contains("fit no SD3 mapping rule") && e.contains("mystery"), "{e}");
    assert!(sd3::plan(&s, Some(&dir().join("config")), true).is_ok());
    // CLIP-G without its projection
    let mut s = Shapes::of_tiny();
    s.0.remove("text_encoders.clip_g.transformer.text_projection.weight");
    assert!(plan_err(&s).contains("CLIP-G needs"));

    // a truncated file is refused when opened
    let bytes = std::fs::read(dir().join("sd3_tiny.safetensors")).unwrap();
    let tmp = std::env::temp_dir().join(format!("sd3-truncated-{}.safetensors", std::process::id()));
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    let e = convert::open(&tmp).err().map(|e| format!("{e:#}")).unwrap_or_default();
    std::fs::remove_file(&tmp).unwrap();
    assert!(!e.is_empty(), "a truncated file opened");
}

/// The fixture file cut as ComfyUI users hold SD3: the MMDiT and VAE in one file, each text encoder in its own
/// (CLIP-L bare, CLIP-G under `transformer.`, T5 bare with a stray decoder tensor, as a full T5 save has).
fn split_fixture(tmp: &std::path::Path) -> [PathBuf; 4] {
    let all = Tensor::read_safetensors(dir().join("sd3_tiny.safetensors")).unwrap();
    let part = |prefix: &str, wrapper: &str| -> Vec<(String, Tensor)> {
        all.iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|l| (format!("{wrapper}{l}"), t.shallow_clone())))
            .collect()
    };
    let main: Vec<(String, Tensor)> = all
        .iter()
        .filter(|(n, _)| !n.starts_with("text_encoders."))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut t5 = part(sd3::T5_PREFIX, "");
    t5.push(("decoder.final_layer_norm.weight".into(), Tensor::ones([8], (Kind::Float, tch::Device::Cpu))));
    let files = [
        (tmp.join("mmdit.safetensors"), main),
        (tmp.join("clip_l.safetensors"), part(sd3::CLIP_L_PREFIX, "")),
        (tmp.join("clip_g.safetensors"), part(sd3::CLIP_G_PREFIX, "transformer.")),
        (tmp.join("t5xxl.safetensors"), t5),
    ];
    for (p, tensors) in &files {
        assert!(!tensors.is_empty(), "{}", p.display());
        Tensor::write_safetensors(tensors, p).unwrap();
    }
    files.map(|(p, _)| p)
}

#[test]
fn separate_encoder_files_convert_as_the_single_file_does() {
    use sd3_encoders::Encoder;
    let tmp = tempfile::tempdir().unwrap();
    let [main, l, g, t5] = split_fixture(tmp.path());
    let srcs: Vec<Box<dyn TensorSource>> = [&main, &l, &g, &t5].iter().map(|p| convert::open(p).unwrap()).collect();
    let files = [
        (Encoder::ClipL, l.as_path(), srcs[1].as_ref()),
        (Encoder::ClipG, g.as_path(), srcs[2].as_ref()),
        (Encoder::T5, t5.as_path(), srcs[3].as_ref()),
    ];
    let joined = sd3_encoders::join(srcs[0].as_ref(), &files).unwrap();
    assert_eq!(joined.dropped.len(), 1, "{:?}", joined.dropped);
    assert!(joined.dropped[0].0.starts_with("decoder.final_layer_norm.weight"), "{:?}", joined.dropped);
    let plan = sd3::plan(&joined, Some(&dir().join("config")), false).unwrap();
    assert!(plan.unknown.is_empty() && plan.notes.is_empty(), "{:?} {:?}", plan.unknown, plan.notes);
    assert!(plan.copied.is_empty(), "every encoder comes from its file, none from --config-dir: {:?}", plan.copied);
    let got = sd3::load_tensors(&joined, &plan).unwrap();
    assert_eq!(got.len(), 5);
    let n = compare(&got, &expected()["sd3_tiny"], "sd3_tiny split into four files");
    assert!(n > 150, "{n}");

    // without --config-dir the T5 tokenizer is asked for, and --t5-tokenizer answers it
    let mut plan = sd3::plan(&joined, None, false).unwrap();
    assert!(plan.notes.iter().any(|n| n.contains("--t5-tokenizer")), "{:?}", plan.notes);
    let tok_dir = dir().join("config/tokenizer_3");
    plan.use_t5_tokenizer(&tok_dir).unwrap();
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    assert_eq!(plan.t5_tokenizer.as_deref(), Some(tok_dir.as_path()));
    let e = plan.use_t5_tokenizer(&main).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json or spiece.model"), "{e}");
}

#[test]
fn separate_encoder_files_are_refused_when_they_do_not_fit() {
    use sd3_encoders::Encoder;
    let tmp = tempfile::tempdir().unwrap();
    let [main, l, g, t5] = split_fixture(tmp.path());
    let whole = convert::open(&dir().join("sd3_tiny.safetensors")).unwrap();
    let (srcm, srcl, srcg, srct) = (
        convert::open(&main).unwrap(),
        convert::open(&l).unwrap(),
        convert::open(&g).unwrap(),
        convert::open(&t5).unwrap(),
    );
    let err = |r: anyhow::Result<sd3_encoders::WithEncoders>| format!("{:#}", r.err().expect("an error"));
    // the checkpoint already holds CLIP-L
    let e = err(sd3_encoders::join(whole.as_ref(), &[(Encoder::ClipL, l.as_path(), srcl.as_ref())]));
    assert!(e.contains("already holds a CLIP-L text encoder") && e.contains("--clip-l"), "{e}");
    // a T5 file passed as CLIP-G
    let e = err(sd3_encoders::join(srcm.as_ref(), &[(Encoder::ClipG, t5.as_path(), srct.as_ref())]));
    assert!(
        e.contains("--clip-g") && e.contains("not a transformers-layout CLIP-G") && e.contains("text_model."),
        "{e}"
    );
    // the same flag twice
    let e = err(sd3_encoders::join(
        srcm.as_ref(),
        &[(Encoder::ClipG, g.as_path(), srcg.as_ref()), (Encoder::ClipG, g.as_path(), srcg.as_ref())],
    ));
    assert!(e.contains("--clip-g is given twice"), "{e}");
    // a file of two encoders: keys outside the encoder's prefix
    let both = tmp.path().join("both.safetensors");
    let mut tensors = Tensor::read_safetensors(&g).unwrap();
    tensors.push(("shared.weight".into(), Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu))));
    Tensor::write_safetensors(&tensors, &both).unwrap();
    let srcb = convert::open(&both).unwrap();
    let e = err(sd3_encoders::join(srcm.as_ref(), &[(Encoder::ClipG, both.as_path(), srcb.as_ref())]));
    assert!(e.contains("`shared.weight` is outside"), "{e}");
}
