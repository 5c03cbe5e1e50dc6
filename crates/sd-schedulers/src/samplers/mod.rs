//! One file per diffusers scheduler class.

pub mod ddim;
pub mod dpm_multistep;
pub mod euler;
pub mod euler_ancestral;
pub mod ddpm;
pub mod heun;
pub mod kdpm2;
pub mod lms;
pub mod pndm;
pub mod unipc;
pub mod lcm;
pub mod edm_euler;
pub mod deis;
pub mod dpm_singlestep;
