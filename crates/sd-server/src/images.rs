//! Images that arrive in requests: base64 (with or without a `data:image/...;base64,` prefix, as A1111 accepts)
//! or raw multipart bytes. Dimensions are read from the header and checked against the server's limit before
//! any pixel is decoded, so a small file that claims to be 100 000 × 100 000 costs nothing.

use crate::error::ApiError;
use base64::Engine as _;
use image::{DynamicImage, ImageReader};
use std::io::Cursor;

/// Decode base64 text to bytes, accepting a data-URL prefix and missing padding.
pub fn b64_bytes(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let body = match text.find(";base64,") {
        Some(i) if text.starts_with("data:") => &text[i + 8..],
        _ => text,
    };
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(body.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("`{field}` is not valid base64: {e}")).with_param(field))
}

/// Standard base64, as A1111 returns images.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decode image bytes after checking the header's size against `max_pixels`.
pub fn decode(field: &str, bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ApiError> {
    let bad = |msg: String| ApiError::bad_request(format!("`{field}`: {msg}")).with_param(field);
    let format = image::guess_format(bytes).map_err(|_| bad("not a PNG, JPEG or WebP image".into()))?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) {
        return Err(bad(format!("{format:?} images are not accepted; send PNG, JPEG or WebP")));
    }
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the {format:?} header: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if w == 0 || h == 0 {
        return Err(bad(format!("the image is empty ({w}x{h})")));
    }
    if pixels > max_pixels {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "`{field}` is {w}x{h} = {pixels} pixels; this server accepts at most {max_pixels} (--max-input-pixels)"
            ),
        )
        .with_param(field));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(pixels * 8 + (1 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| bad(format!("{format:?} data is invalid or truncated: {e}")))
}

/// A plain PNG (no labels): previews only, which are never results.
pub fn preview_png(rgb: &image::RgbImage) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    rgb.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::new(w, h);
        preview_png(&img).unwrap()
    }

    /// CRC-32 (IEEE), so a forged PNG header still passes the decoder's checksum.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn data_url_prefix_and_missing_padding() {
        let bytes = png(3, 2);
        let text = b64(&bytes);
        assert_eq!(b64_bytes("x", &format!("data:image/png;base64,{text}")).unwrap(), bytes);
        assert_eq!(b64_bytes("x", text.trim_end_matches('=')).unwrap(), bytes);
        assert!(b64_bytes("x", "***").is_err());
    }

    #[test]
    fn size_checked_before_decoding() {
        let bytes = png(64, 64);
        assert!(decode("init_images[0]", &bytes, 64 * 64).is_ok());
        let e = decode("init_images[0]", &bytes, 64 * 63).unwrap_err();
        assert_eq!(e.status.as_u16(), 413);
        assert_eq!(e.param.as_deref(), Some("init_images[0]"));
        // A header claiming a huge image, with no pixel data behind it.
        let mut fake = bytes.clone();
        fake[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        fake[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&fake[12..29]);
        fake[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode("mask", &fake, 4096 * 4096).unwrap_err();
        assert_eq!(e.status.as_u16(), 413, "{}", e.message);
        assert!(decode("mask", b"GIF89a....", 100).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn magic() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"\x89PNG\r\n\x1a\n".to_vec()),
            Just(vec![0xff, 0xd8, 0xff]),
            Just(b"RIFF\0\0\0\0WEBPVP8 ".to_vec()),
            Just(Vec::new())
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Request bodies carry images as base64 text: any text is decoded or refused, never a panic.
        #[test]
        fn base64_field_never_panics(text in "(data:image/png;base64,)?[A-Za-z0-9+/= \n-]{0,200}") {
            let _ = b64_bytes("init_images[0]", &text);
        }

        /// Any bytes behind an image signature are decoded or refused with a request error, never a panic, and
        /// never decoded past the pixel bound.
        #[test]
        fn uploaded_image_bytes_never_panic(head in magic(), body in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = head;
            bytes.extend(body);
            if let Ok(img) = decode("image", &bytes, 64 * 64) {
                prop_assert!(u64::from(img.width()) * u64::from(img.height()) <= 64 * 64);
            }
        }
    }
}
