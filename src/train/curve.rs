//! The learning curve of a distillation: held-out KL divergence to the teacher, perplexity
//! and top-1 agreement against training tokens, as CSV and as an SVG chart.

use std::path::Path;

use plotters::prelude::*;

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub tokens: usize,
    pub kld: f64,
    pub ppl: f64,
    /// Fraction of positions whose most likely token is the teacher's.
    pub top1: f64,
}

/// `tokens,kld,ppl,top1` with a header, written through a temporary file.
pub fn write_csv(points: &[Point], path: &Path) -> std::io::Result<()> {
    let mut s = String::from("tokens,kld,ppl,top1\n");
    for p in points {
        s += &format!("{},{:.6},{:.4},{:.4}\n", p.tokens, p.kld, p.ppl, p.top1);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, s)?;
    std::fs::rename(&tmp, path)
}

/// A panel: title, y-axis description, the value it plots.
type Panel = (&'static str, &'static str, fn(&Point) -> f64);

/// Three panels side by side: KLD, PPL and top-1 against training tokens.
pub fn svg(points: &[Point], path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1350, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 3));
    let xmax = points.iter().map(|p| p.tokens).max().unwrap_or(1).max(1) as f64;
    let series: [Panel; 3] = [
        (
            "Held-out KL divergence to the teacher",
            "mean KLD (nats/token)",
            |p| p.kld,
        ),
        ("Held-out perplexity", "PPL", |p| p.ppl),
        (
            "Top-1 agreement with the teacher",
            "same top token (%)",
            |p| 100.0 * p.top1,
        ),
    ];
    for (area, (title, ydesc, f)) in panels.iter().zip(series) {
        let ys: Vec<f64> = points.iter().map(f).collect();
        let (lo, hi) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax * 1.02, (lo - pad).max(0.0)..hi + pad)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("training tokens")
            .y_desc(ydesc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        let pts: Vec<(f64, f64)> = points
            .iter()
            .zip(&ys)
            .map(|(p, &y)| (p.tokens as f64, y))
            .collect();
        let c = RGBColor(31, 119, 180);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_chart_hold_every_point() {
        let dir = std::env::temp_dir().join(format!("ledge-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts = vec![
            Point {
                tokens: 0,
                kld: 0.5,
                ppl: 40.0,
                top1: 0.6,
            },
            Point {
                tokens: 4096,
                kld: 0.3,
                ppl: 35.5,
                top1: 0.7,
            },
        ];
        write_csv(&pts, &dir.join("c.csv")).unwrap();
        let csv = std::fs::read_to_string(dir.join("c.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("4096,0.300000,35.5000,0.7000"), "{csv}");
        svg(&pts, &dir.join("c.svg")).unwrap();
        let s = std::fs::read_to_string(dir.join("c.svg")).unwrap();
        assert!(
            s.contains("Held-out KL divergence") && s.contains("<circle"),
            "{}",
            &s[..200]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
