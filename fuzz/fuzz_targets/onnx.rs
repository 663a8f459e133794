//! ONNX import (`weights::onnx_import::parse_onnx`): protobuf decoding, then the structural
//! match against every zoo model. Must return, never panic, on any bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = resnet::weights::onnx_import::parse_onnx(data, std::path::Path::new("fuzz.onnx"), None);
});
