//! `.pth` loading: the zip, the pickle, the views; read for resnet20 and read whole.
#![no_main]
use std::borrow::Cow;
use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(f) = resnet::weights::WeightsFile::parse(Path::new("fuzz.pth"), Cow::Borrowed(data)) else {
        return;
    };
    let _ = f.read_for(&resnet20_shapes());
    let _ = f.read_all();
});

fn resnet20_shapes() -> Vec<(String, Vec<usize>)> {
    vec![
        ("conv1.weight".into(), vec![16, 3, 3, 3]),
        ("bn1.weight".into(), vec![16]),
        ("fc.weight".into(), vec![10, 64]),
        ("fc.bias".into(), vec![10]),
    ]
}
