//! The lowest layer: plain types every stage shares. It imports nothing from the crate, so
//! any module may use it without making a cycle.

pub mod rng;
pub mod text;

/// 8-bit pixels, height × width × channels (1 for grey, 3 for RGB).
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// CIFAR-10 class names.
pub const CIFAR10_LABELS: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
