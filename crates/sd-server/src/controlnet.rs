//! The A1111 ControlNet extension's API (sd-webui-controlnet, what `webuiapi.ControlNetUnit` sends):
//! `alwayson_scripts: {"controlnet": {"args": [unit, …]}}` on txt2img/img2img, and `GET /controlnet/model_list`,
//! `GET /controlnet/module_list`. ControlNets are diffusers `ControlNetModel` folders under `--controlnet-dir`,
//! named by folder name (a model name's ` [hash]` suffix, as the extension lists them, is ignored).
//!
//! A unit's fields: `enabled`, `image` (base64, or `{"image": …}`; `input_image` is the older name; img2img falls
//! back on the init image as the extension does), `model`, `weight`, `guidance_start`, `guidance_end`,
//! `control_mode` (0 / "Balanced", 2 / "ControlNet is more important" = diffusers' guess mode; 1 / "My prompt is
//! more important" is refused), `resize_mode` (0–2 or the extension's labels), `module` ("none" or "canny"),
//! `threshold_a` / `threshold_b` (Canny's thresholds; absent or negative: 100 / 200). Units that are disabled or
//! name no model are skipped, as the extension skips them. Preprocessors run on the picture at its own size:
//! `processor_res` and `pixel_perfect` are accepted and not used; a `mask` is refused.
//!
//! IP-Adapter units, as the extension runs them: a unit whose `model` is an IP-Adapter file of the folder (told
//! by its tensor names, [`sd_pipeline::ip_adapter::is_ip_adapter_file`]) runs that adapter with the unit's picture
//! as image prompt and `weight` as its scale, exactly as `sd generate --ip-adapter FILE --ip-image IMG --ip-scale
//! W` does. `module` is one of the extension's IP-Adapter preprocessors ([`IP_ADAPTER_MODULES`], or "none"); the
//! image encoder is the first of `--ip-encoder` folders, `image_encoder/` beside the adapter file and the model's
//! `image_encoder/` whose output the adapter takes. `guidance_start` / `guidance_end` other than 0 / 1 are refused
//! (422), as are FaceID modules; `control_mode`, `resize_mode` and the thresholds do not apply (the extension hides
//! them for IP-Adapter units). A job's ControlNet and IP-Adapter units each have their own limit (8 and
//! `limits::IP_ADAPTER_MAX_ADAPTERS`).

use crate::error::{ApiError, ApiResult};
use crate::images;
use crate::job::{ControlUnitSpec, IpAdapterSpec, JobKind};
use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use sd_core::limits;
use sd_pipeline::control::{ControlInput, Preprocess, ResizeMode};
use sd_pipeline::ip_adapter::IpAdapterInput;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Routes under `/controlnet`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/model_list", get(model_list)).route("/module_list", get(module_list))
}

/// File extensions of single-file ControlNets and IP-Adapters (the extension's `CN_MODEL_EXTS`: A1111's
/// `models/ControlNet/` holds `.pth` and `.safetensors` ControlNets and `.bin` / `.safetensors` IP-Adapters).
const SINGLE_FILE_EXTENSIONS: [&str; 5] = ["safetensors", "pth", "ckpt", "pt", "bin"];

/// The extension's IP-Adapter preprocessors this server runs: its names and their labels (`ip-adapter_clip_h` is
/// the label of `ip-adapter_clip_sd15`, `ip-adapter_clip_g` of `ip-adapter_clip_sdxl`), and `ip-adapter-auto`.
pub const IP_ADAPTER_MODULES: [&str; 6] = [
    "ip-adapter-auto",
    "ip-adapter_clip_sd15",
    "ip-adapter_clip_sdxl",
    "ip-adapter_clip_sdxl_plus_vith",
    "ip-adapter_clip_h",
    "ip-adapter_clip_g",
];

/// ControlNets and IP-Adapters under `dir`, sorted by name: folders whose `config.json` says `ControlNetModel`
/// (named by the folder) and single `.safetensors`/`.pth`/`.ckpt`/`.pt`/`.bin` files (named by their stem, as
/// A1111 names them; what a file holds is checked when a unit names it).
pub fn available(dir: Option<&Path>) -> Vec<String> {
    let Some(dir) = dir else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            if is_controlnet(&path) {
                e.file_name().to_str().map(String::from)
            } else if is_single_file(&path) {
                path.file_stem()?.to_str().map(String::from)
            } else {
                None
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn is_controlnet(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
    v.get("_class_name").and_then(|c| c.as_str()) == Some("ControlNetModel")
}

fn is_single_file(path: &Path) -> bool {
    path.is_file() && path.extension().and_then(|e| e.to_str()).is_some_and(|e| SINGLE_FILE_EXTENSIONS.contains(&e))
}

/// The folder or single file of ControlNet `name` inside `dir`: a plain name (never a path out of it) of a
/// ControlNet folder, or the stem of a single file there; the error lists what is available.
pub fn resolve(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let Some(dir) = dir else {
        anyhow::bail!("ControlNet {name:?} requested, but this server has no --controlnet-dir")
    };
    let plain = !name.is_empty()
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && Path::new(name).components().count() == 1;
    let path = dir.join(name);
    let found = if !plain {
        None
    } else if is_controlnet(&path) {
        Some(path)
    } else {
        SINGLE_FILE_EXTENSIONS.iter().map(|ext| dir.join(format!("{name}.{ext}"))).find(|p| is_single_file(p))
    };
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "unknown ControlNet {name:?}; available: {:?} (ControlNet folders, ControlNet and IP-Adapter files of {})",
            available(Some(dir)),
            dir.display()
        )
    })
}

async fn model_list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "model_list": available(state.engine_cfg.controlnet_dir.as_deref()) }))
}

async fn module_list() -> Json<Value> {
    let mut detail = json!({
        "none": { "model_free": false, "sliders": [] },
        "canny": { "model_free": false, "sliders": [
            { "name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255 },
            { "name": "Canny High Threshold", "value": 200, "min": 1, "max": 255 }
        ] }
    });
    // The extension's names (not its labels, as its `alias_names=false` default lists them).
    let ip = &IP_ADAPTER_MODULES[..4];
    for m in ip {
        detail[*m] = json!({ "model_free": false, "sliders": [] });
    }
    let mut list = vec!["none", "canny"];
    list.extend_from_slice(ip);
    Json(json!({ "module_list": list, "module_detail": detail }))
}

/// Whether a (lower-cased) module is one of the extension's IP-Adapter preprocessors, FaceID included.
fn is_ip_module(module: &str) -> bool {
    module.starts_with("ip-adapter")
}

fn field(i: usize, name: &str) -> String {
    format!("alwayson_scripts.controlnet.args[{i}].{name}")
}

fn number(u: &Value, i: usize, name: &str, default: f64) -> ApiResult<f64> {
    match u.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| {
            ApiError::bad_request(format!("`{}` must be a number", field(i, name))).with_param(&field(i, name))
        }),
    }
}

/// One of the extension's enumerations, given as an index or as one of its labels.
fn choice(u: &Value, i: usize, name: &str, labels: &[&[&str]], default: usize) -> ApiResult<usize> {
    let bad = || {
        let names: Vec<&str> = labels.iter().map(|l| l[0]).collect();
        ApiError::bad_request(format!("`{}`: expected 0 to {} or one of {names:?}", field(i, name), labels.len() - 1))
            .with_param(&field(i, name))
    };
    match u.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).filter(|&n| n < labels.len()).ok_or_else(bad),
        Some(Value::String(s)) => {
            labels.iter().position(|l| l.iter().any(|x| x.eq_ignore_ascii_case(s.trim()))).ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

/// The units of `alwayson_scripts.controlnet`, split by kind (each checked: images decode within the limits,
/// models exist and are of the kind the unit asks for).
#[derive(Debug, Default)]
pub struct Units {
    pub controlnet: Vec<ControlUnitSpec>,
    pub ip_adapters: Vec<IpAdapterSpec>,
}

/// `alwayson_scripts.controlnet` → the job's units (checked: images decode within the limits, models exist).
pub fn parse(state: &AppState, script: &Value, kind: JobKind, init: Option<&str>) -> ApiResult<Units> {
    let args = match script.get("args") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Ok(Units::default()),
        Some(_) => {
            return Err(ApiError::bad_request("`alwayson_scripts.controlnet.args` must be a list of units")
                .with_param("alwayson_scripts.controlnet.args"))
        }
    };
    let mut out = Units::default();
    for (i, u) in args.iter().enumerate() {
        if !u.is_object() {
            return Err(ApiError::bad_request(format!("`alwayson_scripts.controlnet.args[{i}]` must be an object")));
        }
        if u.get("enabled").and_then(|e| e.as_bool()) == Some(false) {
            continue;
        }
        let model = u.get("model").and_then(|m| m.as_str()).unwrap_or("None").trim();
        // The extension lists models as "name [hash]"; folders are named without it.
        let model = match model.rsplit_once(" [") {
            Some((base, tail)) if tail.ends_with(']') => base,
            _ => model,
        };
        if model.is_empty() || model.eq_ignore_ascii_case("none") {
            continue;
        }
        let path = resolve(state.engine_cfg.controlnet_dir.as_deref(), model).map_err(|e| {
            ApiError::not_found(format!("`{}`: {e:#}", field(i, "model"))).with_param(&field(i, "model"))
        })?;
        let module = u.get("module").and_then(|m| m.as_str()).unwrap_or("none").to_ascii_lowercase();
        if module.contains("face_id") {
            return Err(ApiError::unsupported(
                &field(i, "module"),
                format!(
                    "`{}` {module:?}: IP-Adapter FaceID (insightface) is not supported; the IP-Adapter modules are \
                     {IP_ADAPTER_MODULES:?}",
                    field(i, "module")
                ),
            ));
        }
        let ip_file = sd_pipeline::ip_adapter::is_ip_adapter_file(&path);
        if is_ip_module(&module) && !ip_file {
            return Err(ApiError::unsupported(
                &field(i, "model"),
                format!(
                    "`{}` {model:?} is not an IP-Adapter file, but the unit's module {module:?} is an IP-Adapter \
                     preprocessor: name an IP-Adapter (ip-adapter_sd15, …) or a ControlNet module",
                    field(i, "model")
                ),
            ));
        }
        if u.get("mask").and_then(|m| m.as_str()).is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::unsupported(
                &field(i, "mask"),
                format!("`{}`: unit masks are not supported", field(i, "mask")),
            ));
        }
        let image = unit_image(state, u, i, kind, init)?;
        if ip_file {
            out.ip_adapters.push(ip_unit(u, i, model, image, module)?);
            continue;
        }
        let control_mode = choice(
            u,
            i,
            "control_mode",
            &[&["Balanced"], &["My prompt is more important"], &["ControlNet is more important"]],
            0,
        )?;
        let legacy_guess = u.get("guessmode").and_then(|g| g.as_bool()).unwrap_or(false);
        if control_mode == 1 {
            return Err(ApiError::unsupported(
                &field(i, "control_mode"),
                format!(
                    "`{}`: \"My prompt is more important\" is not supported; use 0 (Balanced) or 2 (ControlNet is more important)",
                    field(i, "control_mode")
                ),
            ));
        }
        let resize = choice(
            u,
            i,
            "resize_mode",
            &[
                &["Just Resize", "Envelope (Outer Fit)"],
                &["Crop and Resize", "Scale to Fit (Inner Fit)", "Inner Fit (Scale to Fit)"],
                &["Resize and Fill", "Outer Fit (Shrink to Fit)"],
            ],
            1,
        )?;
        if module != "none" && module != "canny" {
            return Err(ApiError::unsupported(
                &field(i, "module"),
                format!(
                    "`{}` {module:?}: the preprocessors are none and canny (and {IP_ADAPTER_MODULES:?} for \
                     IP-Adapter models)",
                    field(i, "module")
                ),
            ));
        }
        let a = number(u, i, "threshold_a", -1.0)?;
        let b = number(u, i, "threshold_b", -1.0)?;
        let spec = ControlUnitSpec {
            model: model.to_string(),
            image,
            weight: number(u, i, "weight", 1.0)?,
            guidance_start: number(u, i, "guidance_start", 0.0)?,
            guidance_end: number(u, i, "guidance_end", 1.0)?,
            guess_mode: control_mode == 2 || legacy_guess,
            resize_mode: ["just", "crop", "fill"][resize].to_string(),
            module,
            threshold_a: if a < 0.0 { 100.0 } else { a },
            threshold_b: if b < 0.0 { 200.0 } else { b },
        };
        let probe = settings(&spec, image::RgbImage::new(1, 1))
            .map_err(|e| ApiError::bad_request(format!("alwayson_scripts.controlnet.args[{i}]: {e:#}")))?;
        sd_pipeline::control::validate(std::slice::from_ref(&probe))
            .map_err(|e| ApiError::bad_request(format!("alwayson_scripts.controlnet.args[{i}]: {e:#}")))?;
        out.controlnet.push(spec);
    }
    if out.controlnet.len() > sd_pipeline::control::MAX_UNITS {
        return Err(ApiError::bad_request(format!(
            "{} enabled ControlNet units; at most {} are supported",
            out.controlnet.len(),
            sd_pipeline::control::MAX_UNITS
        ))
        .with_param("alwayson_scripts.controlnet.args"));
    }
    if out.ip_adapters.len() as u64 > limits::IP_ADAPTER_MAX_ADAPTERS {
        return Err(ApiError::bad_request(format!(
            "`alwayson_scripts.controlnet.args`: {}",
            limits::exceeded(
                format!("{} enabled IP-Adapter units", out.ip_adapters.len()),
                "IP-Adapters",
                limits::IP_ADAPTER_MAX_ADAPTERS,
                "adapters"
            )
        ))
        .with_param("alwayson_scripts.controlnet.args"));
    }
    Ok(out)
}

/// A unit's picture as base64 (img2img falls back on the init image, as the extension does), checked to decode
/// within the server's input limit.
fn unit_image(state: &AppState, u: &Value, i: usize, kind: JobKind, init: Option<&str>) -> ApiResult<String> {
    let image = match u.get("image").or(u.get("input_image")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Object(o)) if o.get("image").and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty()) => {
            if o.get("mask").and_then(|m| m.as_str()).is_some_and(|m| !m.is_empty()) {
                return Err(ApiError::unsupported(&field(i, "image.mask"), "ControlNet unit masks are not supported"));
            }
            o["image"].as_str().unwrap_or_default().to_string()
        }
        _ => match (kind, init) {
            (JobKind::Img2img, Some(init)) => init.to_string(),
            _ => {
                return Err(ApiError::bad_request(format!("`{}`: the unit has no control image", field(i, "image")))
                    .with_param(&field(i, "image")))
            }
        },
    };
    // Strip a data-URL prefix as A1111's decoder does.
    let image = match image.split_once(";base64,") {
        Some((head, data)) if head.starts_with("data:") => data.to_string(),
        _ => image,
    };
    images::decode(
        &field(i, "image"),
        &images::b64_bytes(&field(i, "image"), &image)?,
        state.cfg.limits.max_input_pixels,
    )?;
    Ok(image)
}

/// An IP-Adapter unit: its scale checked as `sd generate --ip-scale` checks it, and guidance start / end, which
/// `sd generate` does not offer for adapters, refused unless they cover the whole run.
fn ip_unit(u: &Value, i: usize, model: &str, image: String, module: String) -> ApiResult<IpAdapterSpec> {
    if module != "none" && !IP_ADAPTER_MODULES.contains(&module.as_str()) {
        return Err(ApiError::unsupported(
            &field(i, "module"),
            format!(
                "`{}` {module:?}: {model:?} is an IP-Adapter; its modules are {IP_ADAPTER_MODULES:?} (or none)",
                field(i, "module")
            ),
        ));
    }
    for (name, whole) in [("guidance_start", 0.0), ("guidance_end", 1.0)] {
        let v = number(u, i, name, whole)?;
        if v != whole {
            return Err(ApiError::unsupported(
                &field(i, name),
                format!(
                    "`{}` {v}: IP-Adapter units run over the whole sampling (guidance_start 0, guidance_end 1); \
                     partial windows are not supported",
                    field(i, name)
                ),
            ));
        }
    }
    let spec = IpAdapterSpec { model: model.to_string(), image, weight: number(u, i, "weight", 1.0)?, module };
    sd_pipeline::ip_adapter::validate(&[IpAdapterInput::new(model, image::RgbImage::new(1, 1), spec.weight)]).map_err(
        |e| ApiError::bad_request(format!("`{}`: {e:#}", field(i, "weight"))).with_param(&field(i, "weight")),
    )?;
    Ok(spec)
}

/// A job's unit as the pipeline takes it (the picture decoded).
pub fn to_input(spec: &ControlUnitSpec) -> anyhow::Result<ControlInput> {
    let bytes = images::b64_bytes("controlnet image", &spec.image).map_err(|e| anyhow::anyhow!(e.message))?;
    let image = images::decode("controlnet image", &bytes, u64::MAX).map_err(|e| anyhow::anyhow!(e.message))?.to_rgb8();
    settings(spec, image)
}

/// A job's IP-Adapter unit as the pipeline takes it (the picture decoded; the name is the file stem, which is
/// what the pipeline names a loaded adapter).
pub fn ip_input(spec: &IpAdapterSpec) -> anyhow::Result<IpAdapterInput> {
    let bytes = images::b64_bytes("IP-Adapter image", &spec.image).map_err(|e| anyhow::anyhow!(e.message))?;
    let image = images::decode("IP-Adapter image", &bytes, u64::MAX).map_err(|e| anyhow::anyhow!(e.message))?.to_rgb8();
    Ok(IpAdapterInput::new(&spec.model, image, spec.weight))
}

fn settings(spec: &ControlUnitSpec, image: image::RgbImage) -> anyhow::Result<ControlInput> {
    let mut unit = ControlInput::new(&spec.model, image);
    unit.scale = spec.weight;
    unit.start = spec.guidance_start;
    unit.end = spec.guidance_end;
    unit.guess_mode = spec.guess_mode;
    unit.resize = spec.resize_mode.parse::<ResizeMode>()?;
    unit.preprocess = match spec.module.as_str() {
        "none" => Preprocess::None,
        "canny" => Preprocess::Canny { low: spec.threshold_a, high: spec.threshold_b },
        other => anyhow::bail!("unknown ControlNet module {other:?}"),
    };
    Ok(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A1111's `models/ControlNet/` holds single files; a folder of diffusers ControlNets holds folders. Both list
    /// and resolve by name, single files by stem, and nothing resolves outside the folder.
    #[test]
    fn folders_and_single_files_are_listed_and_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("canny-folder")).unwrap();
        std::fs::write(d.join("canny-folder/config.json"), r#"{"_class_name": "ControlNetModel"}"#).unwrap();
        std::fs::write(d.join("control_v11p_sd15_canny.pth"), b"x").unwrap();
        std::fs::write(d.join("diffusers_xl_depth.safetensors"), b"x").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(d.join("empty")).unwrap();
        assert_eq!(available(Some(d)), ["canny-folder", "control_v11p_sd15_canny", "diffusers_xl_depth"]);
        assert_eq!(resolve(Some(d), "canny-folder").unwrap(), d.join("canny-folder"));
        assert_eq!(resolve(Some(d), "control_v11p_sd15_canny").unwrap(), d.join("control_v11p_sd15_canny.pth"));
        std::fs::write(d.join("ip-adapter_sd15.bin"), b"x").unwrap();
        assert_eq!(
            available(Some(d)),
            ["canny-folder", "control_v11p_sd15_canny", "diffusers_xl_depth", "ip-adapter_sd15"],
            "IP-Adapter .bin files are listed as the extension lists them"
        );
        assert_eq!(resolve(Some(d), "ip-adapter_sd15").unwrap(), d.join("ip-adapter_sd15.bin"));
        for bad in ["notes", "empty", "../x", "control_v11p_sd15_canny.pth/..", ""] {
            let e = resolve(Some(d), bad).unwrap_err().to_string();
            assert!(e.contains("unknown ControlNet") && e.contains("control_v11p_sd15_canny"), "{bad}: {e}");
        }
    }

    /// A job with ControlNet and IP-Adapter units is what a `sd worker` reads back from Redis (JSON), unchanged;
    /// a job written before IP-Adapter units existed still reads (no units).
    #[test]
    fn jobs_with_ip_adapter_units_round_trip_as_json() {
        let mut job = crate::job::JobRequest {
            kind: JobKind::Txt2img,
            prompt: "a red circle".into(),
            negative_prompt: String::new(),
            steps: 4,
            cfg_scale: 7.0,
            sampler: "Euler".into(),
            schedule: None,
            eta: None,
            seed: 5,
            width: 32,
            height: 32,
            batch_size: 1,
            n_iter: 1,
            clip_skip: 1,
            emphasis: "Original".into(),
            model: None,
            init_image: None,
            mask: None,
            denoising_strength: 0.75,
            mask_invert: false,
            hires: None,
            format: Default::default(),
            quality: None,
            lossless: None,
            init_file: None,
            controlnet: vec![ControlUnitSpec {
                model: "controlnet-sd1".into(),
                image: "aW1n".into(),
                weight: 0.8,
                guidance_start: 0.0,
                guidance_end: 1.0,
                guess_mode: false,
                resize_mode: "crop".into(),
                module: "none".into(),
                threshold_a: 100.0,
                threshold_b: 200.0,
            }],
            ip_adapters: vec![IpAdapterSpec {
                model: "ip-adapter_sd15".into(),
                image: "cGlj".into(),
                weight: 0.6,
                module: "ip-adapter_clip_sd15".into(),
            }],
            refiner: None,
            cache: None,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<crate::job::JobRequest>(&text).unwrap(), job);
        let mut old: Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("ip_adapters");
        job.ip_adapters.clear();
        assert_eq!(serde_json::from_value::<crate::job::JobRequest>(old).unwrap(), job);
    }
}
