//! C2PA signing identity for `sd generate`, and `sd c2pa-root`, which prints the local signing CA's root so that
//! others can choose to trust it (`sd inspect --trust-anchors`, c2patool, Adobe's verify site).

use anyhow::{Context, Result};
use sd_provenance::credentials::{config_dir, Identity};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SignArgs {
    /// Do not add C2PA Content Credentials to the output
    #[arg(long, conflicts_with_all = ["c2pa_cert", "c2pa_key"])]
    pub no_c2pa: bool,
    /// Your C2PA certificate chain (PEM, end entity first); also $SD_C2PA_CERT. Default: a local signing CA
    #[arg(long, value_name = "CHAIN.pem", requires = "c2pa_key")]
    pub c2pa_cert: Option<PathBuf>,
    /// The private key of --c2pa-cert (PEM, PKCS#8); also $SD_C2PA_KEY
    #[arg(long, value_name = "KEY.pem", requires = "c2pa_cert")]
    pub c2pa_key: Option<PathBuf>,
}

impl SignArgs {
    /// The identity to sign with (`None` with --no-c2pa). Said once on stderr when the local CA is made.
    pub fn identity(&self) -> Result<Option<Identity>> {
        if self.no_c2pa {
            return Ok(None);
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cert = self.c2pa_cert.clone().or_else(|| env("SD_C2PA_CERT"));
        let key = self.c2pa_key.clone().or_else(|| env("SD_C2PA_KEY"));
        match (cert, key) {
            (Some(c), Some(k)) => Ok(Some(Identity::from_pem_files(&c, &k)?)),
            (None, None) => Ok(Some(local()?)),
            _ => Err(anyhow::Error::new(super::UsageError(
                "SD_C2PA_CERT and SD_C2PA_KEY go together: set both or neither".into(),
            ))),
        }
    }
}

fn local() -> Result<Identity> {
    let dir = config_dir()?;
    let (id, made) = Identity::local(&dir)?;
    if let Some(root) = made {
        eprintln!(
            "note: made a local C2PA signing CA for Content Credentials in {} (root: {}; `sd c2pa-root` prints it, \
             --c2pa-cert/--c2pa-key use your own certificate, --no-c2pa leaves the manifest out)",
            dir.join("c2pa").display(),
            root.display()
        );
    }
    Ok(id)
}

#[derive(clap::Args)]
pub struct RootArgs {}

pub fn run_root(_args: RootArgs) -> Result<()> {
    local()?;
    let root = config_dir()?.join("c2pa/root-ca.pem");
    let pem = std::fs::read_to_string(&root).with_context(|| format!("cannot read {}", root.display()))?;
    print!("{pem}");
    Ok(())
}
