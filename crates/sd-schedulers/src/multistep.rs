//! The model-output history of the DPM-Solver family (DPM-Solver multistep and singlestep, DEIS, UniPC): diffusers'
//! `model_outputs` list (the last `solver_order` converted outputs, newest last, `None` until filled) and its
//! `lower_order_nums` warm-up counter, which keeps the first steps at a lower order until enough history exists.

use anyhow::{anyhow, Result};
use tch::Tensor;

#[derive(Debug)]
pub struct ModelOutputs {
    outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

impl ModelOutputs {
    /// An empty history of `solver_order` slots.
    pub fn new(solver_order: usize) -> Self {
        Self { outputs: (0..solver_order).map(|_| None).collect(), lower_order_nums: 0 }
    }

    /// Forget every output (a new schedule starts).
    pub fn reset(&mut self) {
        *self = Self::new(self.outputs.len());
    }

    /// Append the newest output, dropping the oldest.
    pub fn push(&mut self, output: Tensor) {
        self.outputs.rotate_left(1);
        if let Some(last) = self.outputs.last_mut() {
            *last = Some(output);
        }
    }

    /// Whether the output `back` steps before the newest (0 = the newest) is there yet.
    pub fn has(&self, back: usize) -> bool {
        self.slot(back).is_some()
    }

    /// The output `back` steps before the newest (0 = the newest).
    pub fn get(&self, back: usize) -> Result<&Tensor> {
        self.slot(back).ok_or_else(|| anyhow!("internal: multistep history is missing an earlier model output"))
    }

    fn slot(&self, back: usize) -> Option<&Tensor> {
        let i = self.outputs.len().checked_sub(back + 1)?;
        self.outputs[i].as_ref()
    }

    /// How many steps have run, up to `solver_order` (diffusers' `lower_order_nums`).
    pub fn lower_order_nums(&self) -> usize {
        self.lower_order_nums
    }

    /// Count a finished step toward the warm-up (diffusers: `if lower_order_nums < solver_order: += 1`).
    pub fn count_step(&mut self) {
        if self.lower_order_nums < self.outputs.len() {
            self.lower_order_nums += 1;
        }
    }
}
