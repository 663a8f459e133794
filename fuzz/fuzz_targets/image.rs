//! Image decoding plus the eval preprocessing (`preprocess::fuzz_image`: resize + centre
//! crop, and --stretch).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // `decode` contains third-party decoder panics (catch_unwind) and returns an error; the
    // harness's hook would abort on them before unwinding, so keep the default hook. A panic
    // that escapes still fails the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    if let Some(lens) = resnet::preprocess::fuzz_image(data) {
        assert_eq!(lens, (3 * 224 * 224, 3 * 32 * 32));
    }
});
