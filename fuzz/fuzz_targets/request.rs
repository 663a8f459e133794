//! The server's request parsing: raw and multipart bodies, through the functions the
//! handler calls (`serve::fuzz_request`). The first line of the input is the Content-Type.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let status = resnet::serve::fuzz_request(data);
    assert!(matches!(status, 200 | 400 | 413 | 415 | 422), "status {status}");
});
