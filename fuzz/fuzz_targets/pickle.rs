//! The pickle VM alone: any bytes, bounded work, never a panic or abort.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = resnet::weights::fuzz_pickle(data);
});
