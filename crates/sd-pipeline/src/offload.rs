//! Running a model on a GPU smaller than the model: `--offload model|sequential`, as diffusers'
//! `enable_model_cpu_offload` / `enable_sequential_cpu_offload` and stable-diffusion.cpp's `--offload-to-cpu`.
//!
//! - **model**: every component (text encoders, UNet with its ControlNets, VAE, safety checker) is loaded into CPU
//!   RAM; before one runs, the one on the GPU goes back to the CPU and this one comes over. The GPU holds the
//!   largest component (SDXL's UNet: 5 GB in f16) instead of all of them (7 GB), for one transfer per component
//!   and request.
//! - **sequential**: nothing stays on the GPU; every layer copies its weights over for its own operation
//!   ([`sd_models::stream`]). GPU memory is then activations plus one layer; every step re-sends the model.
//!
//! Components are moved in place (see [`sd_core::weights::capture`]), so the models' code is unchanged and the
//! pixels are those of a run without offload. Weights wait in CPU RAM; tests make parked weights vanish instead
//! ([`Parking::Vanish`]: empty tensors until brought back), which proves that every component is brought over
//! before it runs even on a machine whose only device is the CPU.

use anyhow::{bail, Context, Result};
use sd_core::weights::Captured;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tch::{Device, Tensor};

/// `--offload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    #[default]
    None,
    Model,
    Sequential,
}

impl std::str::FromStr for Offload {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" | "off" => Self::None,
            "model" => Self::Model,
            "sequential" => Self::Sequential,
            other => bail!("--offload {other}: expected none, model or sequential"),
        })
    }
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Model => "model",
            Self::Sequential => "sequential",
        })
    }
}

/// Where parked weights wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parking {
    /// In CPU RAM (what offloading is for).
    #[default]
    Ram,
    /// Nowhere: each parked weight is an empty tensor until its group is activated (the CPU copy is kept aside),
    /// so using a component that was not activated fails loudly. For tests on machines without a GPU.
    Vanish,
}

/// The parts of a pipeline that move together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    TextEncoders,
    /// The UNet and the ControlNets that feed it (both run at every step).
    Denoiser,
    /// The VAE and TAESD.
    Vae,
    SafetyChecker,
}

const GROUPS: [Group; 4] = [Group::TextEncoders, Group::Denoiser, Group::Vae, Group::SafetyChecker];

fn slot(g: Group) -> usize {
    GROUPS.iter().position(|x| *x == g).unwrap_or(0)
}

struct Parked {
    /// The handles the models hold (their storage is swapped in place).
    weights: Captured,
    /// The CPU copy of each weight, kept while the group is on the GPU so that sending it back costs nothing.
    home: Vec<Tensor>,
    /// Not parked: on the compute device (model offload) or at home for streaming (sequential).
    active: bool,
}

struct State {
    groups: [Option<Parked>; 4],
}

/// Where each component group is, and the moves between CPU and GPU.
pub struct Offloader {
    mode: Offload,
    compute: Device,
    park: Parking,
    state: Mutex<State>,
}

impl Offloader {
    pub fn new(mode: Offload, compute: Device, park: Parking) -> Self {
        Self { mode, compute, park, state: Mutex::new(State { groups: [None, None, None, None] }) }
    }

    /// Where components are built: the CPU when offloading, else the compute device.
    pub fn load_device(&self) -> Device {
        if self.mode == Offload::None {
            self.compute
        } else {
            Device::Cpu
        }
    }

    /// Whether `group` streams layer by layer instead of moving as a whole. Sequential mode streams the networks
    /// made only of `nn` layers; the safety checker holds raw embeddings and moves whole.
    fn streams(&self, group: Group) -> bool {
        self.mode == Offload::Sequential && group != Group::SafetyChecker
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take over the weights of a freshly built component of `group` (built on [`Self::load_device`]), and park
    /// them. Without offload the weights are dropped: nothing will move.
    pub fn adopt(&self, group: Group, weights: Captured) -> Result<()> {
        if self.mode == Offload::None || weights.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        let entry = state.groups[slot(group)].get_or_insert_with(|| Parked {
            weights: Captured::default(),
            home: Vec::new(),
            active: false,
        });
        let mut weights = weights;
        // `detach`: a second tensor over the same storage. A shallow clone would share the model's `TensorImpl`,
        // and swapping the model's storage would swap this copy's too.
        let home: Vec<Tensor> = weights.tensors().iter().map(|t| t.f_detach()).collect::<Result<_, _>>()?;
        let streams = self.streams(group);
        if entry.active && !streams {
            // Added while its group is on the GPU (a ControlNet loaded by a request): join it there.
            bring_over(&mut weights, &home, self.compute)?;
        } else if self.park == Parking::Vanish && !(entry.active && streams) {
            weights.replace_data(|_, t| vanished(t))?;
        }
        entry.home.extend(home);
        entry.weights.extend(weights);
        Ok(())
    }

    /// Forget `group` (its models were dropped, e.g. text encoders released after encoding).
    pub fn release(&self, group: Group) {
        self.lock().groups[slot(group)] = None;
    }

    /// Make `group` ready to run: the group on the compute device goes back first, then this one comes over
    /// (model offload), or layers will stream (sequential; the returned guard must live while the group runs).
    pub fn activate(&self, group: Group) -> Result<Option<sd_models::stream::StreamTo>> {
        if self.mode == Offload::None {
            return Ok(None);
        }
        let mut state = self.lock();
        for (i, g) in GROUPS.iter().enumerate() {
            if *g != group {
                if let Some(p) = state.groups[i].as_mut().filter(|p| p.active) {
                    send_home(p, self.park)?;
                }
            }
        }
        if self.streams(group) {
            // Parked weights (tests) must be put back where streaming copies from.
            if let Some(p) = state.groups[slot(group)].as_mut() {
                if self.park == Parking::Vanish && !p.active {
                    let home = &p.home;
                    p.weights.replace_data(|i, _| Ok(home[i].shallow_clone()))?;
                }
                p.active = true;
            }
            return Ok(Some(sd_models::stream::stream_to(self.compute)));
        }
        if let Some(p) = state.groups[slot(group)].as_mut().filter(|p| !p.active) {
            bring_over(&mut p.weights, &p.home, self.compute)
                .with_context(|| format!("moving {} to {:?} (--offload model)", describe(group), self.compute))?;
            p.active = true;
        }
        Ok(None)
    }

    /// Send every group home (the end of a request, as diffusers' `maybe_free_model_hooks`).
    pub fn park_all(&self) -> Result<()> {
        if self.mode == Offload::None {
            return Ok(());
        }
        let mut state = self.lock();
        for p in state.groups.iter_mut().flatten() {
            if p.active {
                send_home(p, self.park)?;
            }
        }
        Ok(())
    }

    /// Groups now out of their parking place, and the bytes of each group's weights (for tests and reports).
    pub fn report(&self) -> Vec<(Group, bool, u64)> {
        let state = self.lock();
        GROUPS
            .iter()
            .zip(state.groups.iter())
            .filter_map(|(g, p)| p.as_ref().map(|p| (*g, p.active, p.home.iter().map(nbytes).sum())))
            .collect()
    }
}

fn send_home(p: &mut Parked, park: Parking) -> Result<()> {
    let home = &p.home;
    p.weights.replace_data(|i, t| match park {
        Parking::Ram => Ok(home[i].shallow_clone()),
        Parking::Vanish => vanished(t),
    })?;
    p.active = false;
    Ok(())
}

/// Give each weight its CPU copy's values on `compute` (the copy itself when that is the CPU).
fn bring_over(weights: &mut Captured, home: &[Tensor], compute: Device) -> Result<()> {
    weights.replace_data(|i, _| Ok(home[i].f_to_device(compute)?))
}

fn nbytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// An empty stand-in of `t`'s dtype: any operation that needs the weight's values fails on it.
fn vanished(t: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_empty([0], (t.kind(), Device::Cpu))?)
}

fn describe(group: Group) -> &'static str {
    match group {
        Group::TextEncoders => "the text encoders",
        Group::Denoiser => "the UNet",
        Group::Vae => "the VAE",
        Group::SafetyChecker => "the safety checker",
    }
}
