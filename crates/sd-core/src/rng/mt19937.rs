//! PyTorch's `at::mt19937`: the standard 32-bit Mersenne Twister (Matsumoto & Nishimura 1998), seeded with the
//! low 32 bits of the 64-bit seed (`aten/src/ATen/core/MT19937RNGEngine.h`).

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; N],
    next: usize,
    /// Draws left before the state is regenerated; starts at 1 so the first draw twists the fresh state.
    left: usize,
}

impl Mt19937 {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: 0, left: 1 }
    }

    fn twist(u: u32, v: u32) -> u32 {
        let mixed = (u & UPPER_MASK) | (v & LOWER_MASK);
        (mixed >> 1) ^ if v & 1 != 0 { MATRIX_A } else { 0 }
    }

    fn regenerate(&mut self) {
        self.left = N;
        self.next = 0;
        let s = &mut self.state;
        for j in 0..N - M {
            s[j] = s[j + M] ^ Self::twist(s[j], s[j + 1]);
        }
        for j in N - M..N - 1 {
            s[j] = s[j + M - N] ^ Self::twist(s[j], s[j + 1]);
        }
        s[N - 1] = s[M - 1] ^ Self::twist(s[N - 1], s[0]);
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}
