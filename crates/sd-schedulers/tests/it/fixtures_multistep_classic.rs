//! LMS, DDPM and PNDM/PLMS against diffusers' LMSDiscreteScheduler, DDPMScheduler and PNDMScheduler.
//! Tolerance 1e-5 relative per step (LMS coefficients: exact Gauss–Legendre vs scipy quad with epsrel 1e-4 on a
//! cubic, which quad integrates exactly too).
use crate::common;

#[test]
fn lms_matches_diffusers() {
    common::run_family("lms", &["lms"], 1e-5);
}

#[test]
fn ddpm_matches_diffusers() {
    common::run_family("ddpm", &["ddpm"], 1e-5);
}

#[test]
fn pndm_plms_matches_diffusers() {
    common::run_family("pndm", &["plms", "pndm"], 1e-5);
}
