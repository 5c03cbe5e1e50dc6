//! The UNet's extension points against diffusers 0.42.1 (fixtures from scripts/fixtures/gen_31_unet_extensions.py):
//! ControlNet residuals, T2I-Adapter residuals, and an attention hook that reproduces IP-Adapter's decoupled
//! cross-attention with weights stored under diffusers' processor numbering.

use sd_core::weights::SafeTensorsFiles;
use sd_models::attention::{attention, AttentionHook, AttentionMode, AttentionSite};
use sd_models::unet::{AddedCond, UNet2DConditionModel, UNetInputs};
use sd_test_support::max_abs_diff;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
/// f32 on the CPU, same kernels as the fixtures: the plain UNet cases agree to ~1e-6.
const TOL: f64 = 1e-4;

struct Case {
    name: String,
    model: PathBuf,
    tensors: SafeTensorsFiles,
    ip_scale: f64,
    sites: Vec<String>,
}

impl Case {
    fn get(&self, name: &str) -> Option<Tensor> {
        self.tensors.entry(name).map(|_| self.tensors.load(name).expect("fixture tensor"))
    }
    fn must(&self, name: &str) -> Tensor {
        self.get(name).unwrap_or_else(|| panic!("fixture {} lacks `{name}`", self.name))
    }
    fn list(&self, prefix: &str) -> Vec<Tensor> {
        (0..).map_while(|i| self.get(&format!("{prefix}.{i}"))).collect()
    }
    fn unet(&self) -> UNet2DConditionModel {
        UNet2DConditionModel::load(&self.model, Kind::Float, Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }
    fn added(&self) -> Option<AddedCond> {
        self.get("text_embeds").map(|text_embeds| AddedCond { text_embeds, time_ids: self.must("time_ids") })
    }
}

fn cases() -> Vec<Case> {
    let index = Path::new(FIXTURES).join("unet_ext/cases.json");
    let text = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fixtures/gen_31_unet_extensions.py)", index.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json");
    json["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            model: Path::new(FIXTURES).join(c["model"].as_str().expect("model")),
            tensors: SafeTensorsFiles::open(&[Path::new(FIXTURES).join(c["tensors"].as_str().expect("tensors"))])
                .expect("open case"),
            ip_scale: c["ip_scale"].as_f64().expect("ip_scale"),
            sites: c["attention_sites"]
                .as_array()
                .expect("sites")
                .iter()
                .map(|s| s.as_str().expect("site").into())
                .collect(),
        })
        .collect()
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no fixture case {name}"))
}

fn check(c: &Case, inputs: &UNetInputs) {
    let unet = c.unet();
    let got = unet
        .forward_with(&c.must("sample"), &c.must("timestep"), &c.must("encoder_hidden_states"), inputs)
        .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
    let expected = c.must("out");
    let plain = unet
        .forward_with(
            &c.must("sample"),
            &c.must("timestep"),
            &c.must("encoder_hidden_states"),
            &UNetInputs { added: inputs.added, ..Default::default() },
        )
        .expect("plain forward");
    let err = max_abs_diff(&got, &expected);
    let effect = max_abs_diff(&plain, &expected);
    println!("{:18} max abs err {err:.2e}; the extension moved the output by {effect:.3}", c.name);
    assert!(effect > 1e-2, "{}: the extension did not change diffusers' output; the case checks nothing", c.name);
    assert!(err <= TOL, "{}: max abs error {err} > {TOL}", c.name);
}

#[test]
fn controlnet_residuals_match_diffusers() {
    for name in ["sd1_controlnet", "sdxl_controlnet", "deep3_controlnet"] {
        let c = case(name);
        let added = c.added();
        let down = c.list("down_residual");
        let mid = c.must("mid_residual");
        assert_eq!(down.len(), c.unet().skip_count(), "{name}: one residual per skip connection");
        let inputs = UNetInputs {
            added: added.as_ref(),
            down_block_additional_residuals: Some(&down),
            mid_block_additional_residual: Some(&mid),
            ..Default::default()
        };
        check(&c, &inputs);
    }
}

#[test]
fn t2i_adapter_residuals_match_diffusers() {
    // deep3's last level has no attention: its residual takes diffusers' in-place branch, which also changes the
    // level's last skip connection.
    for name in ["sd1_adapter", "deep3_adapter"] {
        let c = case(name);
        let added = c.added();
        let res = c.list("intrablock_residual");
        assert!(!res.is_empty());
        let inputs = UNetInputs {
            added: added.as_ref(),
            down_intrablock_additional_residuals: Some(&res),
            ..Default::default()
        };
        check(&c, &inputs);
    }
}

/// IP-Adapter's decoupled cross-attention written as a hook: the same queries attend to projected image-prompt
/// tokens, scaled and added to the text attention (diffusers `IPAdapterAttnProcessor2_0`).
struct IpAdapter {
    tokens: Tensor,
    scale: f64,
    /// Processor index → (to_k_ip, to_v_ip) weights.
    weights: HashMap<usize, (Tensor, Tensor)>,
    calls: std::cell::Cell<usize>,
}

impl AttentionHook for IpAdapter {
    fn after_attention(
        &self,
        site: &AttentionSite,
        q: &Tensor,
        out: Tensor,
        mode: AttentionMode,
    ) -> anyhow::Result<Tensor> {
        if !site.cross {
            return Ok(out);
        }
        let (wk, wv) = self
            .weights
            .get(&site.index)
            .ok_or_else(|| anyhow::anyhow!("no IP weights for processor {}", site.index))?;
        self.calls.set(self.calls.get() + 1);
        let (b, h, d) = (q.size()[0], q.size()[1], q.size()[3]);
        let split = |t: Tensor| t.reshape([b, -1, h, d]).transpose(1, 2);
        let k = split(self.tokens.matmul(&wk.tr()));
        let v = split(self.tokens.matmul(&wv.tr()));
        Ok(out + attention(q, &k, &v, None, false, mode)? * self.scale)
    }
}

#[test]
fn attention_hook_reproduces_ip_adapter() {
    for name in ["sd1_ip_adapter", "sdxl_ip_adapter"] {
        let c = case(name);
        let mut unet = c.unet();
        // Our numbering is diffusers' `attn_processors` order: the index IP-Adapter weight files are keyed by.
        let ours: Vec<String> = unet.attention_sites().iter().map(|s| format!("{}.processor", s.path)).collect();
        assert_eq!(ours, c.sites, "{name}: attention sites differ from diffusers' attn_processors order");
        let mut weights = HashMap::new();
        for site in unet.attention_sites().iter().filter(|s| s.cross) {
            let w = |kind: &str| c.must(&format!("ip.{}.{kind}.weight", site.index));
            weights.insert(site.index, (w("to_k_ip"), w("to_v_ip")));
        }
        let hook = IpAdapter { tokens: c.must("ip_tokens"), scale: c.ip_scale, weights, calls: 0.into() };
        let added = c.added();
        check(&c, &UNetInputs { added: added.as_ref(), attention_hook: Some(&hook), ..Default::default() });
        let cross = unet.attention_sites().iter().filter(|s| s.cross).count();
        assert_eq!(hook.calls.get(), cross, "{name}: one call per cross-attention layer");
    }
}

/// A hook that hands back what it is given changes nothing, bit for bit.
struct Identity;

impl AttentionHook for Identity {
    fn after_attention(&self, _: &AttentionSite, _: &Tensor, out: Tensor, _: AttentionMode) -> anyhow::Result<Tensor> {
        Ok(out)
    }
}

#[test]
fn identity_hook_is_bit_identical_and_bad_residuals_are_errors() {
    let c = case("sd1_controlnet");
    let unet = c.unet();
    let (x, t, ctx) = (c.must("sample"), c.must("timestep"), c.must("encoder_hidden_states"));
    let plain = unet.forward_with(&x, &t, &ctx, &UNetInputs::default()).expect("plain");
    let hooked = unet.forward_with(&x, &t, &ctx, &UNetInputs { attention_hook: Some(&Identity), ..Default::default() });
    assert_eq!(max_abs_diff(&plain, &hooked.expect("hooked")), 0.0);

    let down = c.list("down_residual");
    let short = &down[..down.len() - 1];
    let err = unet
        .forward_with(&x, &t, &ctx, &UNetInputs { down_block_additional_residuals: Some(short), ..Default::default() })
        .expect_err("one residual short");
    assert!(format!("{err:#}").contains("skip connections"), "{err:#}");
    let mut wrong = down.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>();
    wrong[2] = Tensor::zeros([2, 3, 5, 5], (Kind::Float, Device::Cpu));
    let err = unet
        .forward_with(&x, &t, &ctx, &UNetInputs { down_block_additional_residuals: Some(&wrong), ..Default::default() })
        .expect_err("mis-shaped residual");
    assert!(format!("{err:#}").contains("down_block_additional_residuals[2]"), "{err:#}");
}
