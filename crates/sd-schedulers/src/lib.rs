//! sd-schedulers: every Stable Diffusion sampler behind one trait, step-exact with diffusers (in progress).
