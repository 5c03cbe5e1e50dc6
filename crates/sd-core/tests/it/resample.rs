//! Lanczos resizing against Pillow's own output (fixtures/pipeline/resample_*.png from
//! scripts/fixtures/gen_87_hires.py): every byte must be equal, for shrinking, enlarging by non-integer factors,
//! mixed directions, one-channel masks and a 5×3 source.

use serde_json::Value;
use std::path::PathBuf;

#[test]
fn lanczos_equals_pillow_byte_for_byte() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/pipeline"));
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("resample.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 5);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (w, h) = (c["width"].as_u64().unwrap() as u32, c["height"].as_u64().unwrap() as u32);
        let src = image::open(dir.join(c["source"].as_str().unwrap())).unwrap();
        let want = image::open(dir.join(format!("resample_{name}.png"))).unwrap();
        let equal = if name == "mask" {
            sd_core::resample::lanczos_luma(&src.to_luma8(), w, h).unwrap().as_raw() == want.to_luma8().as_raw()
        } else {
            sd_core::resample::lanczos_rgb(&src.to_rgb8(), w, h).unwrap().as_raw() == want.to_rgb8().as_raw()
        };
        assert!(equal, "{name}: differs from Pillow");
    }
    assert!(sd_core::resample::lanczos_u8(&[0; 5], 2, 2, 1, 4, 4).is_err(), "a buffer of the wrong size is refused");
}
