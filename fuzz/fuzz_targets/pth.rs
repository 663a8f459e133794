//! `.pth` loading: the zip, the pickle, the views (`weights::fuzz_weights`, which the stable
//! replay in tests/fuzz_regressions.rs calls too). Its own target for its own corpus.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::weights::fuzz_weights(data));
