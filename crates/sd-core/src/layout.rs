//! Channels-last (NHWC) memory order for 4-D tensors.
//!
//! A channels-last tensor is still indexed as NCHW; only its strides say that the channel is the fastest-moving
//! dimension, exactly what PyTorch's `.to(memory_format=torch.channels_last)` makes. oneDNN runs convolutions on
//! CPUs fastest in that order, and activations keep it from layer to layer.

use tch::Tensor;

/// The same values in channels-last memory order, still indexed as NCHW.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether a 4-D tensor is laid out channels-last (channel stride 1 with more than one channel).
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    size.len() == 4 && size[1] > 1 && stride[1] == 1
}
