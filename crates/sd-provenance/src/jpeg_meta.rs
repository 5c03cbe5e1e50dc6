//! Metadata from JPEG files for inspection: EXIF `UserComment` (where A1111 stores its parameters in JPEGs),
//! EXIF `ImageDescription`/`Software`, the XMP packet (APP1 `http://ns.adobe.com/xap/1.0/`), `COM` comments, and the
//! frame size. Reads marker segments up to the first scan; never decodes pixels.

use anyhow::{bail, Result};

#[derive(Clone, Debug, Default)]
pub struct JpegMeta {
    pub width: u32,
    pub height: u32,
    pub user_comment: Option<String>,
    pub image_description: Option<String>,
    pub software: Option<String>,
    pub xmp: Option<String>,
    pub comments: Vec<String>,
    /// A C2PA manifest store is carried in APP11 JUMBF boxes.
    pub has_app11_jumbf: bool,
}

pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

pub fn read(bytes: &[u8]) -> Result<JpegMeta> {
    read_bounded(bytes, usize::MAX)
}

/// [`read`], refusing a file with more than `max_segments` marker segments before its image data.
pub fn read_bounded(bytes: &[u8], max_segments: usize) -> Result<JpegMeta> {
    if !is_jpeg(bytes) {
        bail!("not a JPEG file (bad signature)");
    }
    let mut m = JpegMeta::default();
    let mut pos = 2usize;
    let mut saw_frame = false;
    let mut segments = 0usize;
    while pos + 4 <= bytes.len() {
        segments += 1;
        if segments > max_segments {
            bail!("JPEG has more marker segments than the image chunks limit of {max_segments} chunks");
        }
        if bytes[pos] != 0xff {
            bail!("corrupt JPEG: expected a marker at byte {pos}");
        }
        let marker = bytes[pos + 1];
        if marker == 0xff {
            pos += 1;
            continue;
        }
        if marker == 0xd9 || marker == 0xda {
            break; // end of image / start of scan: metadata is before this
        }
        if (0xd0..=0xd7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        if len < 2 || pos + 2 + len > bytes.len() {
            bail!("truncated JPEG: segment 0xFF{marker:02X} at byte {pos} runs past the end of the file");
        }
        let seg = &bytes[pos + 4..pos + 2 + len];
        match marker {
            0xc0..=0xcf if marker != 0xc4 && marker != 0xc8 && marker != 0xcc && seg.len() >= 5 => {
                m.height = u16::from_be_bytes([seg[1], seg[2]]) as u32;
                m.width = u16::from_be_bytes([seg[3], seg[4]]) as u32;
                saw_frame = true;
            }
            0xe1 if seg.starts_with(b"Exif\0\0") => read_exif(&seg[6..], &mut m),
            0xe1 if seg.starts_with(b"http://ns.adobe.com/xap/1.0/\0") => {
                m.xmp = Some(String::from_utf8_lossy(&seg[29..]).into_owned());
            }
            0xeb if seg.len() >= 2 && &seg[..2] == b"JP" => m.has_app11_jumbf = true,
            0xfe => m.comments.push(String::from_utf8_lossy(seg).into_owned()),
            _ => {}
        }
        pos += 2 + len;
    }
    if !saw_frame {
        bail!("truncated or unsupported JPEG: no frame header before the image data");
    }
    Ok(m)
}

struct Tiff<'a> {
    b: &'a [u8],
    le: bool,
}

impl Tiff<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let s = self.b.get(at..at + 2)?;
        Some(if self.le { u16::from_le_bytes([s[0], s[1]]) } else { u16::from_be_bytes([s[0], s[1]]) })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let s = self.b.get(at..at + 4)?;
        let a = [s[0], s[1], s[2], s[3]];
        Some(if self.le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
    }
    /// (tag, type, count, value bytes) of each entry of the IFD at `off`.
    fn entries(&self, off: usize) -> Vec<(u16, u16, usize, &[u8])> {
        let mut out = Vec::new();
        let Some(n) = self.u16(off) else { return out };
        for i in 0..n as usize {
            let e = off + 2 + 12 * i;
            let (Some(tag), Some(typ), Some(count)) = (self.u16(e), self.u16(e + 2), self.u32(e + 4)) else {
                break;
            };
            let unit = match typ {
                1 | 2 | 6 | 7 => 1,
                3 | 8 => 2,
                4 | 9 | 11 => 4,
                5 | 10 | 12 => 8,
                _ => continue,
            };
            let size = unit * count as usize;
            let data = if size <= 4 {
                self.b.get(e + 8..e + 8 + size)
            } else {
                self.u32(e + 8).and_then(|o| self.b.get(o as usize..(o as usize).checked_add(size)?))
            };
            if let Some(d) = data {
                out.push((tag, typ, count as usize, d));
            }
        }
        out
    }
}

fn ascii(d: &[u8]) -> String {
    String::from_utf8_lossy(d).trim_end_matches('\0').to_string()
}

/// EXIF UserComment: 8-byte character-code prefix, then text. "UNICODE" is UTF-16 (piexif, used by A1111, writes
/// big-endian; some tools write little-endian, so the byte order is guessed from where the zero bytes fall).
fn user_comment(d: &[u8]) -> Option<String> {
    if d.len() < 8 {
        return None;
    }
    let (prefix, body) = d.split_at(8);
    let s = if prefix.starts_with(b"UNICODE") {
        let zeros_even = body.iter().step_by(2).filter(|&&b| b == 0).count();
        let zeros_odd = body.iter().skip(1).step_by(2).filter(|&&b| b == 0).count();
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| {
                if zeros_odd > zeros_even {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let s = s.trim_end_matches('\0').to_string();
    (!s.trim().is_empty()).then_some(s)
}

pub(crate) fn read_exif(tiff: &[u8], m: &mut JpegMeta) {
    let le = match tiff.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return,
    };
    let t = Tiff { b: tiff, le };
    let Some(ifd0) = t.u32(4) else { return };
    let mut exif_ifd = None;
    for (tag, _typ, _n, d) in t.entries(ifd0 as usize) {
        match tag {
            0x010e => m.image_description = Some(ascii(d)),
            0x0131 => m.software = Some(ascii(d)),
            0x8769 if d.len() >= 4 => {
                let a = [d[0], d[1], d[2], d[3]];
                exif_ifd = Some(if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) });
            }
            _ => {}
        }
    }
    if let Some(off) = exif_ifd {
        for (tag, _typ, _n, d) in t.entries(off as usize) {
            if tag == 0x9286 {
                m.user_comment = user_comment(d);
            }
        }
    }
}
