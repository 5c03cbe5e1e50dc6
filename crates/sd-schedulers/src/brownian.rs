//! The Brownian-tree noise of diffusers' `DPMSolverSDEScheduler`: `torchsde.BrownianInterval(tol=1e-6,
//! pool_size=24, halfway_tree=True)` (torchsde 0.2.6, no Lévy area), wrapped as diffusers'
//! `BrownianTreeNoiseSampler`. Reproduced bit for bit on the CPU because the noise is part of the result:
//!
//! - every split of an interval seeds its own generator from numpy's `SeedSequence(entropy, spawn_key=(key, depth),
//!   pool_size=24).generate_state(4)` (the first word is the increment seed); the root draws its increment from
//!   `SeedSequence(entropy, pool_size=24).generate_state(3)[0]`;
//! - each draw is `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` (float32 here);
//! - interval ends are rounded to 6 decimals (`round(x, 6)`) and split halfway until a query point is hit;
//! - a child's increment is the Brownian bridge of its parent's: `W·l/h + sqrt(l·r/h)·z` (left), the rest (right).
//!
//! Sources: torchsde `_brownian/brownian_interval.py`, numpy `random/bit_generator.pyx` (SeedSequence).

use anyhow::{ensure, Context, Result};
use sd_core::TorchGenerator;
use std::collections::{HashMap, HashSet};
use tch::{Device, Kind, Tensor};

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 24;

/// An integer as numpy's `_int_to_uint32_array`: little-endian 32-bit words, `[0]` for zero.
fn words(mut n: u128) -> Vec<u32> {
    if n == 0 {
        return vec![0];
    }
    let mut out = vec![];
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
    out
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> 16)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> 16)
}

/// numpy `SeedSequence(entropy, spawn_key, pool_size=24).generate_state(n_words)` (uint32 words).
pub fn seed_sequence(entropy: u64, spawn_key: &[u128], n_words: usize) -> Vec<u32> {
    let mut run = words(entropy as u128);
    let spawn: Vec<u32> = spawn_key.iter().flat_map(|k| words(*k)).collect();
    if !spawn.is_empty() && run.len() < POOL_SIZE {
        run.resize(POOL_SIZE, 0);
    }
    let ent: Vec<u32> = run.into_iter().chain(spawn).collect();
    let mut pool = [0u32; POOL_SIZE];
    let mut hc = INIT_A;
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(ent.get(i).copied().unwrap_or(0), &mut hc);
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src], &mut hc);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &e in ent.iter().skip(POOL_SIZE) {
        for p in pool.iter_mut() {
            let h = hashmix(e, &mut hc);
            *p = mix(*p, h);
        }
    }
    let mut hb = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hb;
            hb = hb.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hb);
            v ^ (v >> 16)
        })
        .collect()
}

/// Python's `round(x, 6)` (correctly rounded through the decimal string, as CPython does).
pub fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

struct Node {
    start: f64,
    end: f64,
    parent: Option<usize>,
    is_left: bool,
    midway: Option<f64>,
    spawn_key: u128,
    depth: u32,
    w_seed: u32,
    children: Option<(usize, usize)>,
}

/// `torchsde.BrownianInterval(t0, t1, size, entropy, tol=1e-6, pool_size=24, halfway_tree=True)`.
pub struct BrownianTree {
    nodes: Vec<Node>,
    shape: Vec<i64>,
    entropy: u64,
    /// Unrounded interval ends (the root increment's variance uses them).
    root_w: Tensor,
    /// Increments known from the previous query (the nodes it visited and their siblings). Consecutive sampler
    /// queries share an end point, so their paths overlap; values never depend on what is cached.
    cache: HashMap<usize, Tensor>,
    /// Number of `randn` draws so far (for tests and timing).
    pub draws: usize,
}

fn randn(shape: &[i64], seed: u32) -> Result<Tensor> {
    TorchGenerator::new(seed as u64).try_randn(shape, Kind::Float, Device::Cpu)
}

impl BrownianTree {
    pub fn new(t0: f64, t1: f64, shape: &[i64], entropy: u64) -> Result<Self> {
        ensure!(t0 <= t1, "Brownian tree: initial time {t0} must not exceed terminal time {t1}");
        let init = seed_sequence(entropy, &[], 3);
        let root_w = randn(shape, init[0])?.f_mul_scalar((t1 - t0).sqrt())?;
        let root = Node {
            start: round6(t0),
            end: round6(t1),
            parent: None,
            is_left: false,
            midway: None,
            spawn_key: 0,
            depth: 0,
            w_seed: 0,
            children: None,
        };
        Ok(Self { nodes: vec![root], shape: shape.to_vec(), entropy, root_w, cache: HashMap::new(), draws: 0 })
    }

    fn split_exact(&mut self, id: usize, midway: f64) -> Result<()> {
        let (key, depth) = match self.nodes[id].parent {
            None => (0, 0),
            Some(p) => (2 * self.nodes[p].spawn_key + u128::from(!self.nodes[id].is_left), self.nodes[p].depth + 1),
        };
        ensure!(depth < 100, "Brownian tree deeper than 100 levels (query times too close together)");
        let seeds = seed_sequence(self.entropy, &[key, depth as u128], 4);
        let (start, end) = (self.nodes[id].start, self.nodes[id].end);
        let n = &mut self.nodes[id];
        n.midway = Some(round6(midway));
        n.spawn_key = key;
        n.depth = depth;
        n.w_seed = seeds[0];
        let l = self.nodes.len();
        let child = |s: f64, e: f64, left: bool| Node {
            start: round6(s),
            end: round6(e),
            parent: Some(id),
            is_left: left,
            midway: None,
            spawn_key: 0,
            depth: 0,
            w_seed: 0,
            children: None,
        };
        self.nodes.push(child(start, midway, true));
        self.nodes.push(child(midway, end, false));
        self.nodes[id].children = Some((l, l + 1));
        Ok(())
    }

    /// `_split` with `halfway_tree`: halve until `point` is a split point.
    fn split(&mut self, mut id: usize, point: f64) -> Result<()> {
        loop {
            let n = &self.nodes[id];
            self.split_exact(id, 0.5 * (n.end + n.start))?;
            let mid = self.nodes[id].midway.context("internal: split without midway")?;
            let (l, r) = self.nodes[id].children.context("internal: split without children")?;
            if point > mid {
                id = r;
            } else if point < mid {
                id = l;
            } else {
                return Ok(());
            }
        }
    }

    /// `_loc`: the intervals whose union is [ta, tb], left to right (descending from the root, which visits the
    /// same nodes as torchsde's walk from the last queried interval).
    fn locate(&mut self, ta: f64, tb: f64, out: &mut Vec<usize>) -> Result<()> {
        let mut stack = vec![(0usize, ta, tb)];
        while let Some((id, ta, tb)) = stack.pop() {
            let (start, end) = (self.nodes[id].start, self.nodes[id].end);
            if ta == start && tb == end {
                out.push(id);
                continue;
            }
            if self.nodes[id].midway.is_none() {
                self.split(id, if ta == start { tb } else { ta })?;
            }
            let mid = self.nodes[id].midway.context("internal: no midway")?;
            let (l, r) = self.nodes[id].children.context("internal: no children")?;
            if tb <= mid {
                stack.push((l, ta, tb));
            } else if ta >= mid {
                stack.push((r, ta, tb));
            } else {
                stack.push((r, mid, tb));
                stack.push((l, ta, mid));
            }
        }
        Ok(())
    }

    /// The increments of the children of `id` (whose increment is `w`): the Brownian bridge `W·l/h + sqrt(l·r/h)·z`
    /// for the left one and the rest for the right one, in torchsde's float32 op order.
    fn children_increments(&mut self, id: usize, w: &Tensor) -> Result<(Tensor, Tensor)> {
        self.draws += 1;
        let n = &self.nodes[id];
        let mid = n.midway.context("internal: split node without midway")?;
        let h_rec = 1.0 / (n.end - n.start);
        let (ld, rd) = (mid - n.start, n.end - mid);
        let noise = randn(&self.shape, n.w_seed)?;
        let mean = w.f_mul_scalar(ld)?.f_mul_scalar(h_rec)?;
        let left = mean.f_add(&noise.f_mul_scalar((ld * rd * h_rec).sqrt())?)?;
        let right = w.f_sub(&left)?;
        Ok((left, right))
    }

    /// Σ W over `leaves` (disjoint, left to right), walking down from the root once: every node on the way costs at
    /// most one draw, none if the previous query already knew its children. (torchsde draws per node with a
    /// 45-entry cache, which a query of ~40 intervals on ~20-deep paths overflows; the values are the same.)
    fn sum_increments(&mut self, leaves: &[usize]) -> Result<Tensor> {
        let leaf_set: HashSet<usize> = leaves.iter().copied().collect();
        let mut needed = HashSet::new();
        for &l in leaves {
            let mut cur = Some(l);
            while let Some(c) = cur {
                if !needed.insert(c) {
                    break;
                }
                cur = self.nodes[c].parent;
            }
        }
        let old = std::mem::take(&mut self.cache);
        let mut acc: Option<Tensor> = None;
        let mut stack = vec![(0usize, self.root_w.shallow_clone())];
        while let Some((id, w)) = stack.pop() {
            self.cache.insert(id, w.shallow_clone());
            if leaf_set.contains(&id) {
                acc = Some(match acc {
                    None => w,
                    Some(a) => a.f_add(&w)?,
                });
                continue;
            }
            let (l, r) = self.nodes[id].children.context("internal: Brownian tree path through a leaf")?;
            let (nl, nr) = (needed.contains(&l), needed.contains(&r));
            let (cl, cr) = (old.get(&l).map(Tensor::shallow_clone), old.get(&r).map(Tensor::shallow_clone));
            let (wl, wr) = match (cl, cr) {
                (Some(a), Some(b)) => (Some(a), Some(b)),
                (Some(a), None) if !nr => (Some(a), None),
                (None, Some(b)) if !nl => (None, Some(b)),
                _ => {
                    let (a, b) = self.children_increments(id, &w)?;
                    (Some(a), Some(b))
                }
            };
            // both children are kept: the next query (which shares an end point) usually needs the sibling
            for (c, wc) in [(l, &wl), (r, &wr)] {
                if let Some(t) = wc {
                    self.cache.insert(c, t.shallow_clone());
                }
            }
            // right pushed first so the left subtree (earlier in time) is summed first, as torchsde does
            if let (true, Some(t)) = (nr, wr) {
                stack.push((r, t));
            }
            if let (true, Some(t)) = (nl, wl) {
                stack.push((l, t));
            }
        }
        acc.context("internal: empty Brownian tree query")
    }

    /// `BrownianInterval(ta, tb)`: W(tb) − W(ta), query times clamped to the tree's (rounded) ends.
    pub fn query(&mut self, ta: f64, tb: f64) -> Result<Tensor> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let ta = ta.clamp(start, end).max(start);
        let tb = tb.clamp(start, end);
        ensure!(ta <= tb, "Brownian tree query times {ta} > {tb}");
        if ta == tb {
            return Ok(Tensor::f_zeros(self.shape.as_slice(), (Kind::Float, Device::Cpu))?);
        }
        let mut ids = vec![];
        self.locate(round6(ta), round6(tb), &mut ids)?;
        self.sum_increments(&ids)
    }
}

/// diffusers' `BrownianTreeNoiseSampler` (identity transform, one tree for the whole batch): unit-variance noise
/// for a step from σ to σ_next, `(W(σ_next) − W(σ)) / sqrt|σ_next − σ|`, all in float32.
pub struct BrownianNoise {
    tree: BrownianTree,
}

impl BrownianNoise {
    /// `sigma_min`/`sigma_max`: float32 values, as diffusers passes them (`.item()` of the float32 sigmas).
    pub fn new(sigma_min: f32, sigma_max: f32, shape: &[i64], seed: u64) -> Result<Self> {
        let (lo, hi) = if sigma_min < sigma_max { (sigma_min, sigma_max) } else { (sigma_max, sigma_min) };
        Ok(Self { tree: BrownianTree::new(lo as f64, hi as f64, shape, seed)? })
    }

    pub fn sample(&mut self, sigma: f32, sigma_next: f32) -> Result<Tensor> {
        let (lo, hi, sign) = if sigma < sigma_next { (sigma, sigma_next, 1.0) } else { (sigma_next, sigma, -1.0) };
        let w = self.tree.query(lo as f64, hi as f64)?.f_mul_scalar(sign)?;
        let scale = (sigma_next - sigma).abs().sqrt();
        Ok(w.f_div_scalar(scale as f64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from numpy 2.4.6: `SeedSequence(entropy=12345678901234567, [spawn_key=(5, 3),] pool_size=24)`.
    #[test]
    fn seed_sequence_matches_numpy() {
        assert_eq!(seed_sequence(12345678901234567, &[5, 3], 4), vec![2889846680, 1321783888, 219226134, 3739979786]);
        assert_eq!(seed_sequence(12345678901234567, &[], 3), vec![783060437, 3718619564, 349039938]);
    }

    #[test]
    fn round6_is_python_round() {
        assert_eq!(round6(0.029167472), 0.029167);
        assert_eq!(round6(14.614641189575195), 14.614641);
        assert_eq!(round6(1.000_000_5), 1.000001);
    }

    /// Split points are canonical (halfway, seeded by position), so increments add up across queries and trees.
    #[test]
    fn increments_add_up_and_are_reproducible() {
        let shape = [1i64, 4, 3, 3];
        let mut t = BrownianTree::new(0.03, 14.6, &shape, 7).unwrap();
        let ab = t.query(0.5, 2.25).unwrap();
        let bc = t.query(2.25, 9.0).unwrap();
        let mut fresh = BrownianTree::new(0.03, 14.6, &shape, 7).unwrap();
        let ac = fresh.query(0.5, 9.0).unwrap();
        let diff = (&ab + &bc - &ac).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "W(a,b) + W(b,c) - W(a,c) = {diff}");
        let again = BrownianTree::new(0.03, 14.6, &shape, 7).unwrap().query(0.5, 2.25).unwrap();
        assert_eq!(again.abs().sum(Kind::Double).double_value(&[]), ab.abs().sum(Kind::Double).double_value(&[]));
        let other = BrownianTree::new(0.03, 14.6, &shape, 8).unwrap().query(0.5, 2.25).unwrap();
        assert!((&other - &ab).abs().max().double_value(&[]) > 1e-3, "a different seed gives different noise");
    }

    /// `BT_SHAPE=1,4,128,128 cargo test --release -p sd-schedulers --lib timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing only"]
    fn timing_sd_latent() {
        let shape: Vec<i64> = std::env::var("BT_SHAPE")
            .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
            .unwrap_or(vec![1, 4, 128, 128]);
        let s = std::time::Instant::now();
        let mut n = BrownianNoise::new(0.0292, 14.6146, &shape, 1).unwrap();
        let sig: Vec<f32> = (0..=40).map(|i| 14.6146 * (0.0292f32 / 14.6146).powf(i as f32 / 40.0)).collect();
        // the SDE sampler's pattern: to the midpoint, then the full step
        for w in sig.windows(2) {
            let _ = n.sample(w[0], (w[0] * w[1]).sqrt()).unwrap();
            let _ = n.sample(w[0], w[1]).unwrap();
        }
        let (nodes, draws) = (n.tree.nodes.len(), n.tree.draws);
        eprintln!("80 queries on {shape:?}: {:?}, {nodes} nodes, {draws} draws", s.elapsed());
        let s = std::time::Instant::now();
        for i in 0..20 {
            let _ = randn(&shape, i).unwrap();
        }
        eprintln!("one randn of {shape:?}: {:?}", s.elapsed() / 20);
    }
}
