//! The server's request parsing: raw and multipart bodies, through the functions the
//! handler calls. The first line of the input is the Content-Type.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or(&[]);
    let status = resnet::serve::fuzz_request(&content_type, body);
    assert!(matches!(status, 200 | 400 | 413 | 415 | 422), "status {status}");
});
