//! Detection confidence levels: Stability's 48-bit cut-offs and their binomial equivalent for other lengths.
//! Tail values cross-checked with scipy.stats.binom.sf (0.15616340373663468, 0.002757600742750555,
//! 0.00035863483669729146 for t = 28, 34, 36 of 48); relative tolerance 1e-9.

use sd_provenance::watermark::{binomial_tail, classify, thresholds, Confidence};

#[test]
fn binomial_tail_matches_scipy() {
    for (t, want) in [(28, 0.15616340373663468), (34, 0.002757600742750555), (36, 0.00035863483669729146)] {
        let got = binomial_tail(48, t);
        assert!(((got - want) / want).abs() < 1e-9, "P(X>={t}) = {got}, scipy {want}");
    }
    assert_eq!(binomial_tail(10, 0), 1.0);
    assert_eq!(binomial_tail(10, 11), 0.0);
}

#[test]
fn stability_thresholds_are_reproduced_for_48_bits() {
    assert_eq!(thresholds(48), [28, 34, 36]);
    assert_eq!(classify(27, 48), Confidence::None);
    assert_eq!(classify(28, 48), Confidence::Partial);
    assert_eq!(classify(33, 48), Confidence::Partial);
    assert_eq!(classify(34, 48), Confidence::Likely);
    assert_eq!(classify(35, 48), Confidence::Likely);
    assert_eq!(classify(36, 48), Confidence::VeryLikely);
}

#[test]
fn sd_v1_thresholds_follow_the_same_false_positive_rates() {
    // scipy: smallest t with binom.sf(t-1, 136, .5) <= the 48-bit rates above
    assert_eq!(thresholds(136), [75, 85, 89]);
    assert_eq!(classify(136, 136), Confidence::VeryLikely);
    assert_eq!(classify(68, 136), Confidence::None);
}
