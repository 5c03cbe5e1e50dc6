//! Where checkpoint tensors come from: a safetensors file (memory-mapped) or a torch zip checkpoint read by the
//! safe pickle reader. Both hand out one tensor at a time, so converting a 7 GB checkpoint needs about one
//! tensor's worth of memory beyond the output being written.

use super::ckpt::CkptFile;
use anyhow::{bail, Context, Result};
use sd_core::weights::{kind_of, SafeTensorsFiles};
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// A flat name → tensor checkpoint.
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// Shape of a tensor without reading it.
    fn shape(&self, name: &str) -> Option<Vec<i64>>;
    /// Stored element type.
    fn kind(&self, name: &str) -> Option<Kind>;
    /// Read one tensor onto the CPU in its stored dtype.
    fn load(&self, name: &str) -> Result<Tensor>;
    /// `global_step` next to the state dict, when the checkpoint records it (used by diffusers' SD2 heuristics).
    fn global_step(&self) -> Option<i64> {
        None
    }
    /// For messages.
    fn describe(&self) -> String;
}

impl TensorSource for SafeTensorsFiles {
    fn names(&self) -> Vec<String> {
        SafeTensorsFiles::names(self).map(String::from).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.entry(name).map(|e| e.shape.clone())
    }
    fn kind(&self, name: &str) -> Option<Kind> {
        self.entry(name).and_then(|e| kind_of(e.dtype))
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        SafeTensorsFiles::load(self, name)
    }
    fn describe(&self) -> String {
        self.paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// What a file is, judged from its first bytes (never from its extension alone).
#[derive(Debug, PartialEq)]
pub enum FileFormat {
    SafeTensors,
    TorchZip,
}

/// Look at the first bytes of `path` and say what it is, or why it cannot be read.
pub fn sniff(path: &Path) -> Result<FileFormat> {
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..]).with_context(|| format!("cannot read {}", path.display()))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(FileFormat::TorchZip);
    }
    if head.len() > 9 && head[8] == b'{' {
        return Ok(FileFormat::SafeTensors);
    }
    // torch.save before PyTorch 1.6 (`_use_new_zipfile_serialization=False`): a pickled magic number 0x1950a86a20f9469cfc6c.
    let legacy_magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    if head.len() >= 14 && head[0] == 0x80 && head[2] == 0x8a && head[3] == 0x0a && head[4..14] == legacy_magic {
        bail!(
            "{} is a legacy (pre-1.6, non-zip) torch.save file, which sd-rs does not read; re-save it as \
             safetensors (e.g. `safetensors.torch.save_file(torch.load(f, weights_only=True)[\"state_dict\"], out)`) \
             and convert that",
            path.display()
        );
    }
    if head.len() > 262 && &head[257..262] == b"ustar" {
        bail!(
            "{} is a tar-format torch.save file (PyTorch < 0.4), which is not supported; re-save it as safetensors",
            path.display()
        );
    }
    if n == 0 {
        bail!("{} is empty", path.display());
    }
    bail!(
        "{} is neither a safetensors file nor a PyTorch zip checkpoint (first bytes {:02x?}); wrong file or truncated download?",
        path.display(),
        &head[..n.min(8)]
    )
}

/// Open a checkpoint of either format as a [`TensorSource`]; scaled float8 weights read as their dequantized
/// values ([`super::fp8`]).
pub fn open(path: &Path) -> Result<Box<dyn TensorSource>> {
    let src: Box<dyn TensorSource> = match sniff(path)? {
        FileFormat::SafeTensors => Box::new(SafeTensorsFiles::open(&[path.to_path_buf()])?),
        FileFormat::TorchZip => Box::new(CkptFile::open(path)?),
    };
    super::fp8::wrap(src)
}
