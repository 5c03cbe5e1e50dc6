//! One file per diffusers scheduler class.

pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod dpm_multistep;
pub mod dpm_sde;
pub mod dpm_singlestep;
pub mod dpmpp_2s_ancestral;
pub mod edm_euler;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod kdpm2;
pub mod lcm;
pub mod lms;
pub mod pndm;
pub mod unipc;
