//! C2PA Content Credentials with the Content Authenticity Initiative's `c2pa` crate (pure-Rust crypto, no
//! OpenSSL): signing every output, validating manifests for `sd inspect`, and reading creators' opt-outs.
//!
//! What a manifest we sign says: a `c2pa.actions` assertion — `c2pa.created` with IPTC digital source type
//! `trainedAlgorithmicMedia` for txt2img; for img2img and inpainting the init image is a `parentOf` ingredient
//! (its own manifest kept), opened and then `c2pa.edited` with `compositeWithTrainedAlgorithmicMedia` — the
//! generator in `claim_generator_info`, and an `org.sd-rs.generation` assertion with the model, its hash and the
//! A1111 parameters.
//!
//! Who signs: the user's certificate chain and key (PEM) when given; otherwise a local signing CA and an
//! end-entity certificate made on first use in the user's config folder ([`Identity::local`]). Such a signature
//! proves the file is unchanged since this machine signed it, and nothing about who owns the machine, until
//! others choose to trust that CA's root.

use crate::formats::OutputFormat;
use anyhow::{anyhow, bail, Context as _, Result};
use c2pa::{Builder, BuilderIntent, Context, Reader, SigningAlg};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Cursor;
use std::path::{Path, PathBuf};

pub const TRAINED: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";
pub const COMPOSITE: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia";
/// Our assertion with the model and the parameters.
pub const GENERATION_LABEL: &str = "org.sd-rs.generation";
/// PEM files larger than this are refused before parsing (a chain of a few certificates is a few KB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// A manifest store larger than this in an init image is not copied into an output.
pub const MAX_INGREDIENT_BYTES: usize = 64 << 20;

/// A certificate chain (end entity first) and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub chain_pem: String,
    key_pem: String,
    pub alg: SigningAlg,
    /// Where it came from, for messages.
    pub origin: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("alg", &self.alg).field("origin", &self.origin).finish_non_exhaustive()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.len() > MAX_PEM_BYTES {
        bail!("{what} {} is {} bytes, more than the {MAX_PEM_BYTES} a PEM file may have", path.display(), meta.len());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !text.contains("-----BEGIN ") {
        bail!("{what} {} is not PEM (no -----BEGIN line)", path.display());
    }
    Ok(text)
}

/// The config folder of sd-rs: `$SD_RS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/sd-rs`, else `~/.config/sd-rs`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SD_RS_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|b| b.join("sd-rs"))
        .ok_or_else(|| {
            anyhow!("neither SD_RS_CONFIG_DIR, XDG_CONFIG_HOME nor HOME is set: nowhere to keep the C2PA signing key")
        })
}

impl Identity {
    /// The user's own chain and key. The algorithm is the first of ES256, ES384, ES512, PS256, Ed25519 the key
    /// signs with.
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Self> {
        let chain_pem = read_pem(chain, "C2PA certificate chain")?;
        let key_pem = read_pem(key, "C2PA private key")?;
        let origin = format!("certificate {}", chain.display());
        Self::from_pem(chain_pem, key_pem, origin)
    }

    pub fn from_pem(chain_pem: String, key_pem: String, origin: String) -> Result<Self> {
        for alg in [SigningAlg::Es256, SigningAlg::Es384, SigningAlg::Es512, SigningAlg::Ps256, SigningAlg::Ed25519] {
            if c2pa::create_signer::from_keys(chain_pem.as_bytes(), key_pem.as_bytes(), alg, None).is_ok() {
                return Ok(Self { chain_pem, key_pem, alg, origin });
            }
        }
        bail!(
            "{origin}: the key and certificate chain do not form a C2PA signer (expected a PEM chain, end-entity \
             certificate first, and its PKCS#8 private key: ECDSA P-256/384/521, RSA-PSS or Ed25519)"
        )
    }

    /// The local signing identity in `dir/c2pa/`, made on first use: a CA (10 years) and an end-entity
    /// certificate it issues (2 years, key usage digitalSignature, EKU emailProtection), both ECDSA P-256.
    /// Returns the identity and, when it was just made, the path of the CA root to tell the user about.
    pub fn local(dir: &Path) -> Result<(Self, Option<PathBuf>)> {
        let d = dir.join("c2pa");
        let (chain, key, root) = (d.join("signer-chain.pem"), d.join("signer-key.pem"), d.join("root-ca.pem"));
        if chain.exists() && key.exists() {
            return Ok((Self::from_pem_files(&chain, &key)?, None));
        }
        // Several processes may start at once on a fresh machine (a test suite, workers): each writes a complete
        // identity into its own folder and renames it into place; the first rename wins and the others use it.
        let made = local_ca::make("sd-rs local C2PA signer")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
        let tmp = dir.join(format!(".c2pa-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let written = (|| -> Result<()> {
            write_private(&tmp.join("signer-key.pem"), made.ee_key_pem.as_bytes())?;
            std::fs::write(tmp.join("root-ca.pem"), &made.ca_pem).context("cannot write the CA root")?;
            let chain_pem = format!("{}{}", made.ee_pem, made.ca_pem);
            std::fs::write(tmp.join("signer-chain.pem"), chain_pem).context("cannot write the certificate chain")
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("cannot make the local C2PA identity in {}", dir.display())));
        }
        match std::fs::rename(&tmp, &d) {
            Ok(()) => Ok((Self::from_pem_files(&chain, &key)?, Some(root))),
            Err(_) if chain.exists() && key.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok((Self::from_pem_files(&chain, &key)?, None))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(anyhow!(
                    "cannot put the local C2PA identity in {}: {e} (a folder without signer-chain.pem and \
                     signer-key.pem is in the way; remove it to make a new identity)",
                    d.display()
                ))
            }
        }
    }

    fn signer(&self) -> Result<c2pa::BoxedSigner> {
        c2pa::create_signer::from_keys(self.chain_pem.as_bytes(), self.key_pem.as_bytes(), self.alg, None)
            .map_err(|e| anyhow!("{}: cannot make a C2PA signer: {e}", self.origin))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

mod local_ca {
    use anyhow::{Context, Result};
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    pub struct Made {
        pub ca_pem: String,
        pub ee_pem: String,
        pub ee_key_pem: String,
    }

    fn name(cn: &str) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "sd-rs (local, self-issued)");
        dn
    }

    pub fn make(cn: &str) -> Result<Made> {
        let now = time::OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot make the CA key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        ca.distinguished_name = name(&format!("{cn} root CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = now - time::Duration::days(1);
        ca.not_after = now + time::Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_key).context("cannot self-sign the CA")?;

        let ee_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot make the signing key")?;
        let mut ee = CertificateParams::new(Vec::<String>::new()).context("signer parameters")?;
        ee.distinguished_name = name(cn);
        ee.is_ca = IsCa::ExplicitNoCa;
        ee.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        ee.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        ee.use_authority_key_identifier_extension = true;
        ee.not_before = now - time::Duration::days(1);
        ee.not_after = now + time::Duration::days(730);
        let ee_cert = ee.signed_by(&ee_key, &ca_cert, &ca_key).context("cannot issue the signing certificate")?;
        Ok(Made { ca_pem: ca_cert.pem(), ee_pem: ee_cert.pem(), ee_key_pem: ee_key.serialize_pem() })
    }
}

/// What one output's manifest says beyond the fixed parts.
#[derive(Clone, Debug, Default)]
pub struct ClaimInfo<'a> {
    pub generator_name: &'a str,
    pub generator_version: &'a str,
    pub model: Option<&'a str>,
    pub model_hash: Option<&'a str>,
    /// The A1111 parameters text.
    pub parameters: &'a str,
    /// img2img / inpainting: the init image file's bytes (any manifest it has is kept as the ingredient's).
    pub parent: Option<&'a [u8]>,
}

fn mime_of(bytes: &[u8]) -> Option<&'static str> {
    if crate::png_chunks::is_png(bytes) {
        Some("image/png")
    } else if crate::jpeg_meta::is_jpeg(bytes) {
        Some("image/jpeg")
    } else if crate::formats::is_webp(bytes) {
        Some("image/webp")
    } else {
        None
    }
}

fn quiet_context() -> Result<Context> {
    // no network: no OCSP fetches, no remote manifests
    let settings = json!({"verify": {"ocsp_fetch": false, "remote_manifest_fetch": false}});
    Context::new().with_settings(settings).map_err(|e| anyhow!("C2PA settings: {e}"))
}

/// Embeds a signed manifest into `bytes` (an encoded `format` file) and returns the new file.
pub fn sign(bytes: &[u8], format: OutputFormat, info: &ClaimInfo, id: &Identity) -> Result<Vec<u8>> {
    let agent = json!({"name": info.generator_name, "version": info.generator_version});
    let mut actions = Vec::new();
    if info.parent.is_some() {
        actions.push(json!({"action": "c2pa.edited", "digitalSourceType": COMPOSITE, "softwareAgent": agent}));
    } else {
        actions.push(json!({"action": "c2pa.created", "digitalSourceType": TRAINED, "softwareAgent": agent}));
    }
    let definition = json!({
        "claim_generator_info": [agent],
        "title": format!("{} output", info.generator_name),
        "format": format.mime(),
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            {"label": GENERATION_LABEL, "data": {
                "model": info.model, "model_hash": info.model_hash, "parameters": info.parameters,
            }},
        ],
    });
    let mut builder = Builder::from_context(quiet_context()?)
        .with_definition(definition.to_string().as_str())
        .map_err(|e| anyhow!("C2PA manifest definition: {e}"))?;
    if let Some(parent) = info.parent {
        let mime =
            mime_of(parent).context("the init image is not PNG, JPEG or WebP: cannot record it as an ingredient")?;
        if parent.len() > MAX_INGREDIENT_BYTES {
            bail!(
                "the init image file is {} bytes, more than the {MAX_INGREDIENT_BYTES} an ingredient may have",
                parent.len()
            );
        }
        builder.set_intent(BuilderIntent::Edit);
        let ingredient = json!({"title": "init image", "relationship": "parentOf"}).to_string();
        builder
            .add_ingredient_from_stream(ingredient, mime, &mut Cursor::new(parent))
            .map_err(|e| anyhow!("cannot record the init image as a C2PA ingredient: {e}"))?;
    }
    let signer = id.signer()?;
    let mut source = Cursor::new(bytes);
    let mut dest = Cursor::new(Vec::with_capacity(bytes.len() + 32 * 1024));
    builder
        .sign(signer.as_ref(), format.mime(), &mut source, &mut dest)
        .map_err(|e| anyhow!("cannot sign the C2PA manifest ({}): {e}", id.origin))?;
    Ok(dest.into_inner())
}

/// What `sd inspect` says about a manifest store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct C2paReport {
    /// `Trusted` (chains to a given anchor), `Valid` (intact, signer not trusted), `Invalid`.
    pub state: String,
    /// Failure codes (e.g. `assertion.dataHash.mismatch` for edited pixels), and informational ones.
    pub failures: Vec<String>,
    pub informational: Vec<String>,
    pub claim_generator: Option<String>,
    pub signer: Option<String>,
    pub issuer: Option<String>,
    pub signed_at: Option<String>,
    pub actions: Vec<String>,
    pub digital_source_types: Vec<String>,
    pub ingredients: Vec<String>,
    pub generation: Option<Value>,
    /// `c2pa.training-mining` / `cawg.training-mining` entries: (use, value), e.g. ("c2pa.ai_inference", "notAllowed").
    pub training_mining: Vec<(String, String)>,
}

/// Reads and validates the manifest store of `bytes`; `None` when there is none. `anchors_pem`: trust anchors.
pub fn inspect(bytes: &[u8], anchors_pem: Option<&str>) -> Result<Option<C2paReport>> {
    let Some(mime) = mime_of(bytes) else { return Ok(None) };
    let mut settings = json!({"verify": {"ocsp_fetch": false, "remote_manifest_fetch": false}});
    if let Some(a) = anchors_pem {
        settings["trust"] = json!({"trust_anchors": a});
        settings["verify"]["verify_trust"] = json!(true);
    }
    let ctx = Context::new().with_settings(settings).map_err(|e| anyhow!("C2PA trust settings: {e}"))?;
    let reader = match Reader::from_context(ctx).with_stream(mime, Cursor::new(bytes)) {
        Ok(r) => r,
        Err(c2pa::Error::JumbfNotFound | c2pa::Error::ProvenanceMissing) => return Ok(None),
        Err(e) => {
            return Ok(Some(C2paReport {
                state: "Invalid".into(),
                failures: vec![format!("manifest store unreadable: {e}")],
                ..Default::default()
            }))
        }
    };
    let mut r = C2paReport { state: format!("{:?}", reader.validation_state()), ..Default::default() };
    if let Some(results) = reader.validation_results() {
        if let Some(active) = results.active_manifest() {
            r.failures = active.failure().iter().map(|s| s.code().to_string()).collect();
            r.informational = active.informational().iter().map(|s| s.code().to_string()).collect();
        }
        for delta in results.ingredient_deltas().into_iter().flatten() {
            for s in delta.validation_deltas().failure() {
                r.failures.push(format!("ingredient: {}", s.code()));
            }
        }
    }
    let store: Value = serde_json::from_str(&reader.json()).unwrap_or(Value::Null);
    let active = store["active_manifest"].as_str().and_then(|l| store["manifests"].get(l));
    if let Some(m) = active {
        r.claim_generator = m["claim_generator_info"][0]["name"].as_str().map(|n| {
            format!("{n} {}", m["claim_generator_info"][0]["version"].as_str().unwrap_or("")).trim().to_string()
        });
        r.signer = m["signature_info"]["common_name"].as_str().map(str::to_string);
        r.issuer = m["signature_info"]["issuer"].as_str().map(str::to_string);
        r.signed_at = m["signature_info"]["time"].as_str().map(str::to_string);
        for a in m["assertions"].as_array().into_iter().flatten() {
            let label = a["label"].as_str().unwrap_or("");
            if label.starts_with("c2pa.actions") {
                for act in a["data"]["actions"].as_array().into_iter().flatten() {
                    r.actions.extend(act["action"].as_str().map(str::to_string));
                    r.digital_source_types.extend(act["digitalSourceType"].as_str().map(str::to_string));
                }
            } else if label == GENERATION_LABEL {
                r.generation = Some(a["data"].clone());
            } else if label.ends_with("training-mining") {
                for (k, v) in a["data"]["entries"].as_object().into_iter().flatten() {
                    r.training_mining.push((k.clone(), v["use"].as_str().unwrap_or("").to_string()));
                }
            }
        }
        for ing in m["ingredients"].as_array().into_iter().flatten() {
            let title = ing["title"].as_str().unwrap_or("untitled");
            let rel = ing["relationship"].as_str().unwrap_or("componentOf");
            let signed = if ing["active_manifest"].is_string() { ", with its own manifest" } else { "" };
            r.ingredients.push(format!("{title} ({rel}{signed})"));
        }
    }
    Ok(Some(r))
}

/// Refuses an init image whose creator reserved AI inference (`c2pa.ai_inference` notAllowed in a
/// training-mining assertion of its manifest).
pub fn check_inference_allowed(init_bytes: &[u8], name: &str) -> Result<()> {
    let Some(report) = inspect(init_bytes, None)? else { return Ok(()) };
    if let Some((k, v)) = report.training_mining.iter().find(|(k, v)| k.ends_with("ai_inference") && v == "notAllowed")
    {
        bail!(
            "{name}: its C2PA Content Credentials reserve AI use ({k}: {v}, signed by {}): sd-rs will not use it \
             as an init image",
            report.signer.as_deref().unwrap_or("an unnamed signer")
        );
    }
    Ok(())
}
