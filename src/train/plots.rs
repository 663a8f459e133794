//! PNG pictures of a run: loss and accuracy curves, and the confusion matrix.
//!
//! Drawn with `plotters` into a pixel buffer and saved with `image`; the font
//! (`base::text::DEJAVU_SANS`) is embedded so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::EpochMetrics;
use crate::error::{Error, Result};

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, crate::base::text::DEJAVU_SANS);
    });
}

fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::ImageWrite {
        path: path.to_path_buf(),
        reason,
    }
}

fn save(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path)("buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| plot_err(path)(e.to_string()))?;
    crate::weights::write_atomic(path, &png)
}

/// A named, coloured line of `(epoch, value)` points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// `curves.png`: train/val loss (left) and train/val top-1 accuracy (right) per epoch.
pub fn curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    register_font();
    let (w, h) = (1100u32, 450u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path)(e.to_string()))?;
        let (left, right) = root.split_horizontally(w / 2);
        let epochs = history.len().max(1) as f64;
        let max_loss = history
            .iter()
            .flat_map(|m| [m.train_loss, m.val_loss])
            .fold(0.1, f64::max);
        let draw = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                    title: &str,
                    y_max: f64,
                    legend: SeriesLabelPosition,
                    series: [Series; 2]|
         -> std::result::Result<(), String> {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(0.5..epochs + 0.5, 0.0..y_max)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-6 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .draw()
                .map_err(|e| e.to_string())?;
            for (name, color, pts) in series {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(legend)
                .draw()
                .map_err(|e| e.to_string())
        };
        let pts = |f: fn(&EpochMetrics) -> f64| history.iter().map(|m| (m.epoch as f64, f(m))).collect::<Vec<_>>();
        draw(
            &left,
            "loss",
            max_loss * 1.1,
            SeriesLabelPosition::UpperRight,
            [
                ("train", BLUE, pts(|m| m.train_loss)),
                ("val", RED, pts(|m| m.val_loss)),
            ],
        )
        .map_err(plot_err(path))?;
        draw(
            &right,
            "top-1 accuracy",
            1.0,
            // Accuracy curves run along the top: keep the legend out of their way.
            SeriesLabelPosition::LowerRight,
            [("train", BLUE, pts(|m| m.train_acc)), ("val", RED, pts(|m| m.top1))],
        )
        .map_err(plot_err(path))?;
        root.present().map_err(|e| plot_err(path)(e.to_string()))?;
    }
    save(path, buf, w, h)
}

/// `confusion.png`: rows are true classes, columns predictions, shaded by row share.
pub fn confusion(path: &Path, cm: &[Vec<u64>], classes: &[String]) -> Result<()> {
    register_font();
    let k = cm.len().max(1);
    let cell = (600 / k as u32).clamp(8, 60);
    let margin = 170u32;
    let (w, h) = (margin + cell * k as u32 + 20, margin + cell * k as u32 + 20);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path)(e.to_string()))?;
        let font = ("sans-serif", (cell as f64 * 0.35).clamp(9.0, 15.0)).into_font();
        let err = |e: DrawingAreaErrorKind<_>| plot_err(path)(e.to_string());
        root.draw(&Text::new(
            "true \u{2193}  predicted \u{2192}",
            (8, 8),
            ("sans-serif", 16).into_font(),
        ))
        .map_err(err)?;
        for (t, row) in cm.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &n) in row.iter().enumerate() {
                let share = n as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let color = if t == p {
                    RGBColor(shade, 255 - (255 - shade) / 3, shade)
                } else {
                    RGBColor(255, shade, shade)
                };
                let (x0, y0) = ((margin + p as u32 * cell) as i32, (margin + t as u32 * cell) as i32);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                    color.filled(),
                ))
                .map_err(err)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                    BLACK.mix(0.2),
                ))
                .map_err(err)?;
                if cell >= 30 && n > 0 {
                    root.draw(&Text::new(n.to_string(), (x0 + 3, y0 + cell as i32 / 3), font.clone()))
                        .map_err(err)?;
                }
            }
        }
        for (i, c) in classes.iter().enumerate().take(k) {
            let label: String = c.chars().take(22).collect();
            let y = (margin + i as u32 * cell + cell / 3) as i32;
            root.draw(&Text::new(label.clone(), (6, y), font.clone()))
                .map_err(err)?;
            let x = (margin + i as u32 * cell + cell / 3) as i32;
            let rotated = font.clone().transform(FontTransform::Rotate270);
            root.draw(&Text::new(label, (x, margin as i32 - 6), rotated))
                .map_err(err)?;
        }
        root.present().map_err(|e| plot_err(path)(e.to_string()))?;
    }
    save(path, buf, w, h)
}
