//! The zip container of `torch.save` files (`.ckpt`, `.pt`, `.bin`), opened with bounds: the member count, the
//! inflated size of `data.pkl` and of each storage, and every member's inflation ratio are checked against
//! [`sd_core::limits`] from the central directory before anything is inflated, and members are then read through
//! a reader that stops at the bound, so a member whose header lies about its size cannot grow the process either.

use anyhow::{anyhow, bail, Context, Result};
use sd_core::limits;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An opened torch zip archive and where its `data.pkl` lives.
pub struct TorchZip {
    pub path: PathBuf,
    zip: zip::ZipArchive<File>,
    /// `archive/` (or empty for a flat archive): storages are `{prefix}data/{key}`.
    pub prefix: String,
    pkl: String,
    file_len: u64,
}

impl TorchZip {
    /// Open `path`; `what` names the kind of file for messages ("zip checkpoint", "torch.save file").
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let zip = zip::ZipArchive::new(file).map_err(|e| {
            anyhow!("{} is not a readable {what} ({e}); truncated download or corrupt file?", path.display())
        })?;
        if zip.len() as u64 > limits::ZIP_MAX_MEMBERS {
            bail!(
                "{}: {}",
                path.display(),
                limits::exceeded(format!("{} members", zip.len()), "zip members", limits::ZIP_MAX_MEMBERS, "members")
            );
        }
        let pkl = zip
            .file_names()
            .find(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
            .map(String::from)
            .ok_or_else(|| anyhow!("{} is a zip file but not a {what} (no data.pkl)", path.display()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        Ok(Self { path: path.to_path_buf(), zip, prefix, pkl, file_len })
    }

    /// The inflated `data.pkl`, at most [`limits::ZIP_MAX_PICKLE_BYTES`].
    pub fn read_pickle(&mut self) -> Result<Vec<u8>> {
        let name = self.pkl.clone();
        self.read_member(&name, limits::ZIP_MAX_PICKLE_BYTES, Some("zip data.pkl size"))
    }

    /// A small text member (`byteorder`, `version`), at most 64 bytes are read.
    pub fn read_small_text(&mut self, name: &str) -> Option<String> {
        let mut f = self.zip.by_name(name).ok()?;
        let mut s = String::new();
        f.by_ref().take(64).read_to_string(&mut s).ok()?;
        Some(s)
    }

    /// The first `need` bytes of storage `key`, refusing before allocating when the member cannot hold them.
    pub fn read_storage(&mut self, key: &str, need: u64) -> Result<Vec<u8>> {
        let name = format!("{}data/{key}", self.prefix);
        let path = self.path.display().to_string();
        let size = self
            .zip
            .by_name(&name)
            .map_err(|e| anyhow!("{path}: storage `{name}` is missing ({e}); truncated checkpoint?"))?
            .size();
        if size < need {
            bail!("{path}: storage `{name}` holds {size} bytes, {need} expected (truncated checkpoint?)");
        }
        let bytes = self.read_member(&name, need, None)?;
        if (bytes.len() as u64) < need {
            bail!("{path}: storage `{name}` holds {} bytes, {need} expected (truncated checkpoint?)", bytes.len());
        }
        Ok(bytes)
    }

    /// Inflate at most `max` bytes of member `name`, after checking its declared sizes and inflation ratio. With a
    /// `bound` name, a member larger than `max` is an error naming that bound; without, only `max` bytes are read.
    fn read_member(&mut self, name: &str, max: u64, bound: Option<&str>) -> Result<Vec<u8>> {
        let path = self.path.display().to_string();
        let file_len = self.file_len;
        let f = self.zip.by_name(name).map_err(|e| anyhow!("{path}: cannot read `{name}` ({e})"))?;
        let (size, packed) = (f.size(), f.compressed_size());
        if let Some(bound) = bound.filter(|_| size > max) {
            bail!("{path}: `{name}`: {}", limits::exceeded(format!("{size} bytes"), bound, max, "bytes"));
        }
        let ratio = limits::ZIP_MAX_INFLATION_RATIO;
        if packed > file_len || (size > limits::ZIP_RATIO_EXEMPT_BYTES && size / packed.max(1) > ratio) {
            let what = format!("{size} bytes from {packed} compressed");
            bail!("{path}: `{name}`: {} (zip bomb?)", limits::exceeded(what, "zip inflation ratio", ratio, "×"));
        }
        // The declared size may lie: read through a bound, one byte past it to tell "exactly max" from "more".
        let cap = max.min(size);
        let mut out = Vec::with_capacity(cap.min(64 * 1024 * 1024) as usize);
        f.take(cap + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{path}: cannot inflate `{name}` (truncated or corrupt)"))?;
        if out.len() as u64 > cap {
            if let Some(bound) = bound.filter(|_| cap == max) {
                bail!("{path}: `{name}`: {}", limits::exceeded("its inflated data", bound, max, "bytes"));
            }
            out.truncate(cap as usize);
        }
        Ok(out)
    }
}
