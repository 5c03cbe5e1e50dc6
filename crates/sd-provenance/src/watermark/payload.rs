//! What the watermark carries.

use serde::{Deserialize, Serialize};

/// The 48-bit message Stability AI's SDXL scripts and diffusers' `StableDiffusionXLWatermarker` embed.
pub const SDXL_MESSAGE: u64 = 0xB3EC_907B_B19E;
/// The bytes the SD 1.x/2.x reference scripts (CompVis/Stability `txt2img.py`) embed.
pub const SD_V1_BYTES: &[u8] = b"StableDiffusionV1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// `StableDiffusionV1` as bytes (136 bits); the default for SD 1.x/2.x models.
    SdV1,
    /// The SDXL 48-bit message; the default for SDXL models.
    Sdxl,
    /// Arbitrary bytes, most significant bit first (like `np.unpackbits`).
    Bytes(Vec<u8>),
    /// Arbitrary bits.
    Bits(Vec<bool>),
}

impl Payload {
    pub fn bits(&self) -> Vec<bool> {
        match self {
            Payload::SdV1 => bytes_to_bits(SD_V1_BYTES),
            Payload::Sdxl => (0..48).rev().map(|k| (SDXL_MESSAGE >> k) & 1 == 1).collect(),
            Payload::Bytes(b) => bytes_to_bits(b),
            Payload::Bits(b) => b.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.bits().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short human name used in reports and metadata.
    pub fn name(&self) -> String {
        match self {
            Payload::SdV1 => "StableDiffusionV1".into(),
            Payload::Sdxl => "SDXL 0xB3EC907BB19E".into(),
            Payload::Bytes(b) => format!("bytes {}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
            Payload::Bits(b) => format!("bits {}", b.iter().map(|&x| if x { '1' } else { '0' }).collect::<String>()),
        }
    }
}

pub fn bytes_to_bits(bytes: &[u8]) -> Vec<bool> {
    bytes.iter().flat_map(|&b| (0..8).rev().map(move |k| (b >> k) & 1 == 1)).collect()
}
