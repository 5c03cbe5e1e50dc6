//! Visible label: placement, scaling with the image, contrast, unsupported characters.

use image::{Rgb, RgbImage};
use sd_provenance::visible_label::{draw_label, glyphs_for, Corner, DEFAULT_TEXT};

#[test]
fn default_label_is_drawn_in_the_corner_with_contrast() {
    for (w, h) in [(256, 256), (512, 768), (1024, 1024), (2048, 1152)] {
        let mut img = RgbImage::from_pixel(w, h, Rgb([250, 250, 250]));
        let p = draw_label(&mut img, DEFAULT_TEXT, Corner::BottomRight).unwrap();
        assert!(p.x + p.width <= w && p.y + p.height <= h, "{p:?}");
        assert!(p.x > w / 3 && p.y > h / 2, "bottom-right expected: {p:?}");
        assert!(p.text_height >= 12 && p.text_height as f32 >= w.min(h) as f32 * 0.03, "{p:?}");
        assert!(p.width <= w * 9 / 10 + 1);
        // box is dark, text is white, outside untouched
        let inside: Vec<u8> = (p.y..p.y + p.height)
            .flat_map(|y| (p.x..p.x + p.width).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0[0])
            .collect();
        let dark = inside.iter().filter(|&&v| v < 100).count();
        let bright = inside.iter().filter(|&&v| v > 200).count();
        assert!(
            dark > inside.len() / 2 && bright > inside.len() / 20,
            "dark {dark} bright {bright} of {}",
            inside.len()
        );
        assert_eq!(img.get_pixel(0, 0).0, [250, 250, 250]);
    }
}

#[test]
fn label_shrinks_to_fit_narrow_images_and_corners_work() {
    let mut img = RgbImage::new(200, 600);
    let p = draw_label(&mut img, DEFAULT_TEXT, Corner::TopLeft).unwrap();
    assert!(p.x + p.width <= 180 + p.x && p.width <= 181 && p.y < 20, "{p:?}");
    let mut tiny = RgbImage::new(40, 40);
    assert!(draw_label(&mut tiny, DEFAULT_TEXT, Corner::BottomLeft).is_err());
}

#[test]
fn unsupported_characters_are_named() {
    assert!(glyphs_for("AI-generated 生成 ok ~!").is_ok());
    let e = format!("{:#}", glyphs_for("AI合成 é").unwrap_err());
    assert!(e.contains("'合'") && e.contains("'é'") && !e.contains("'成'"), "{e}");
    assert!(glyphs_for("   ").is_err());
}
