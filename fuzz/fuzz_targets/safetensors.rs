//! `.safetensors` loading: header, offsets, dtypes (`weights::fuzz_weights`, as `pth` runs it,
//! on its own corpus).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::weights::fuzz_weights(data));
