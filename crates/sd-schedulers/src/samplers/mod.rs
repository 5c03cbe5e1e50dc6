//! The samplers: one file per sampler family, holding its step math, its `Class` (the diffusers scheduler class it
//! reproduces) and the `Descriptor` of every sampler built on it.
//!
//! `sampler_table!` below is the whole registry: each line declares a sampler file and the descriptors it exports,
//! in the order `sd samplers` lists them (for a model's own class, "default" reports the first sampler of that class
//! whose settings the model's config already has, so a class's plainest sampler comes first). A new sampler is a new
//! file and one line here.

macro_rules! sampler_table {
    ($( $module:ident: [$($descriptor:ident),+ $(,)?], )*) => {
        $( pub mod $module; )*

        /// Every registered sampler, in table order.
        pub static SAMPLERS: &[&crate::descriptor::Descriptor] = &[$($(&$module::$descriptor,)+)*];
    };
}

sampler_table! {
    euler: [EULER],
    euler_ancestral: [EULER_A],
    ddim: [DDIM],
    dpm_multistep: [DPMPP_2M, DPMPP_2M_SDE, DPMPP_3M_SDE, DPM_2M],
    dpmpp_2m_sde_heun: [DPMPP_2M_SDE_HEUN],
    heun: [HEUN],
    lms: [LMS],
    kdpm2: [DPM2, DPM2_A],
    ddpm: [DDPM],
    pndm: [PLMS, PNDM],
    unipc: [UNIPC],
    lcm: [LCM, TCD],
    edm_euler: [EDM_EULER],
    deis: [DEIS],
    dpm_singlestep: [DPMPP_2S],
    dpmpp_2s_ancestral: [DPMPP_2S_A],
    dpm_sde: [DPMPP_SDE],
    flow_euler: [FLOW_EULER],
    flow_euler_a: [FLOW_EULER_A],
    flow_heun: [FLOW_HEUN],
    flow_dpmpp_2m: [FLOW_DPMPP_2M],
}
