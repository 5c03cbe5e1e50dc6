//! One file per diffusers scheduler class.

pub mod ddim;
pub mod dpm_multistep;
pub mod euler;
pub mod euler_ancestral;
