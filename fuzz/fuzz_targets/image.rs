//! Image decoding plus the eval preprocessing (resize + centre crop, and --stretch).
#![no_main]
use resnet::preprocess::{decode, decode_cost, Transform};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // `decode` contains third-party decoder panics (catch_unwind) and returns an error; the
    // harness's hook would abort on them before unwinding, so keep the default hook. A panic
    // that escapes still fails the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
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
