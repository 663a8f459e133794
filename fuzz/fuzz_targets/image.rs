//! Image decoding plus the eval preprocessing (resize + centre crop, and --stretch).
#![no_main]
use resnet::preprocess::{decode, decode_cost, Transform};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = decode_cost(data, "fuzz");
    // A small pixel limit keeps each run fast; the limit itself is what is under test.
    let Ok(img) = decode(data, "fuzz", 1 << 22) else {
        return;
    };
    let a = Transform::imagenet(256, 224).apply(&img);
    assert_eq!(a.len(), 3 * 224 * 224);
    let b = Transform::stretch(32).apply(&img);
    assert_eq!(b.len(), 3 * 32 * 32);
});
