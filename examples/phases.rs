//! Times the phases of classifying one image: read weights, build, load, decode, forward.
//! `cargo run --release --example phases -- MODEL WEIGHTS IMAGE`
use std::time::Instant;

use resnet::preprocess::{open_image, Transform, DEFAULT_MAX_PIXELS};
use resnet::{weights, ModelName, ResNet};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        anyhow::bail!("usage: phases MODEL WEIGHTS IMAGE");
    }
    let (name, file, image) = (a[1].parse::<ModelName>()?, &a[2], &a[3]);
    let t = Instant::now();
    let sd = weights::read_state_dict(file.as_ref())?;
    eprintln!("read weights  {:>7.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let dev = resnet::default_device();
    let mut m = ResNet::new(&name.config(), &dev)?;
    eprintln!("build model   {:>7.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    weights::load_into(&mut m, sd, true, name.as_str())?;
    eprintln!("load params   {:>7.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let img = open_image(image.as_ref(), DEFAULT_MAX_PIXELS)?;
    let x = Transform::imagenet(256, 224).batch(&[img], &dev);
    eprintln!("decode+prep   {:>7.1} ms", t.elapsed().as_secs_f64() * 1e3);
    for _ in 0..3 {
        let t = Instant::now();
        let y = m.forward(x.clone())?.into_data();
        eprintln!(
            "forward       {:>7.1} ms ({} values)",
            t.elapsed().as_secs_f64() * 1e3,
            y.num_elements()
        );
    }
    Ok(())
}
