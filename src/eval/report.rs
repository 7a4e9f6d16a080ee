//! The size–quality report: a markdown table of every variant (size, bits per weight,
//! perplexity, KL divergence from the baseline, top-token agreement, speed, memory) and an SVG
//! chart of the trade-off, so the choice can be seen rather than read.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::kld::{Estimate, KldStats};
use crate::gguf::GgufFile;

/// One evaluated file.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub file: String,
    /// The tensor types that hold its bytes, largest share first ("Q4_1 91% + Q8_0 9%").
    pub recipe: String,
    pub size_bytes: u64,
    pub bits_per_weight: f64,
    pub ppl: Estimate,
    /// None for the baseline itself.
    pub kld: Option<KldStats>,
    pub pp_tokens_per_second: Option<f64>,
    pub tg_tokens_per_second: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub is_baseline: bool,
}

/// "Q4_1 91% + Q6_K 9%": tensor types by their share of the tensor bytes (shares under 1%
/// are left out).
pub fn recipe(f: &GgufFile) -> String {
    let t = crate::inspect::totals(f);
    let mut v: Vec<(String, u64)> = t
        .by_type
        .iter()
        .map(|(ty, (_, _, bytes))| (ty.to_string(), *bytes))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total = t.bytes.max(1) as f64;
    v.iter()
        .filter(|(_, b)| *b as f64 / total >= 0.01)
        .map(|(ty, b)| format!("{ty} {:.0}%", 100.0 * *b as f64 / total))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Tensor bits per weight: tensor bytes × 8 / parameters.
pub fn bits_per_weight(f: &GgufFile) -> f64 {
    let t = crate::inspect::totals(f);
    if t.elements == 0 {
        0.0
    } else {
        t.bytes as f64 * 8.0 / t.elements as f64
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.prec$}"))
}

/// The report's markdown: a header saying what was measured, then one row per file.
pub fn markdown(rows: &[Row], text: &str, ctx: usize, chunks: usize) -> String {
    let mut s = format!(
        "# ledge report\n\nText: `{text}`, {chunks} chunks of {ctx} tokens (second half of each \
         scored, llama-perplexity's protocol). KLD: mean KL divergence from the baseline's \
         next-token distribution (exact, over the whole vocabulary); top-1: share of positions where both pick the \
         same most likely token. Speed: pp = prompt processing, tg = generation, tokens/s. \
         Peak memory: peak resident set while that file alone was loaded and benchmarked.\n\n\
         ![size against KL divergence and speed](report.svg)\n\n\
         | file | type / recipe | size | bits/weight | PPL | KLD | top-1 | pp t/s | tg t/s | peak memory |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let (kld, top1) = match &r.kld {
            Some(k) => (
                format!("{:.5} ± {:.5}", k.kld_mean.value, k.kld_mean.stderr),
                format!("{:.2}%", 100.0 * k.same_top.value),
            ),
            None if r.is_baseline => ("0 (baseline)".to_string(), "100%".to_string()),
            None => ("–".to_string(), "–".to_string()),
        };
        s += &format!(
            "| {}{} | {} | {:.1} MiB | {:.2} | {:.3} ± {:.3} | {} | {} | {} | {} | {} |\n",
            r.file,
            if r.is_baseline { " (baseline)" } else { "" },
            r.recipe,
            mib(r.size_bytes),
            r.bits_per_weight,
            r.ppl.value,
            r.ppl.stderr,
            kld,
            top1,
            opt(r.pp_tokens_per_second, 1),
            opt(r.tg_tokens_per_second, 1),
            r.peak_rss_bytes
                .map_or_else(|| "–".to_string(), |b| format!("{:.0} MiB", mib(b))),
        );
    }
    s
}

fn kld_of(r: &Row) -> f64 {
    r.kld.as_ref().map_or(0.0, |k| k.kld_mean.value)
}

/// Writes the chart: file size against mean KLD (left) and against generation speed
/// (right), one labelled point per file.
pub fn svg(rows: &[Row], path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);
    let sizes: Vec<f64> = rows.iter().map(|r| mib(r.size_bytes)).collect();
    let (smin, smax) = sizes
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
    let pad = ((smax - smin) * 0.12).max(smax * 0.05).max(1.0);
    let xr = (smin - pad).max(0.0)..smax + pad;
    let kmax = rows.iter().map(kld_of).fold(0.0f64, f64::max);
    let kr = 0.0..(kmax * 1.2).max(1e-4);
    let label_style = ("sans-serif", 15).into_font().color(&BLACK);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];

    let mut chart = ChartBuilder::on(&left)
        .caption("Size vs KL divergence from baseline", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xr.clone(), kr)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("file size (MiB)")
        .y_desc("mean KLD (nats/token)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in rows.iter().enumerate() {
        let c = colors[i % colors.len()];
        let p = (sizes[i], kld_of(r));
        chart
            .draw_series(std::iter::once(Circle::new(p, 6, c.filled())))
            .map_err(|e| err(&e))?
            .label(legend_name(r))
            .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(label_style.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let tg: Vec<Option<f64>> = rows.iter().map(|r| r.tg_tokens_per_second).collect();
    let tmax = tg.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    let mut chart = ChartBuilder::on(&right)
        .caption("Size vs generation speed", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xr, 0.0..(tmax * 1.2).max(1.0))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("file size (MiB)")
        .y_desc("tg tokens/s")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, t) in tg.iter().enumerate() {
        if let Some(t) = t {
            let c = colors[i % colors.len()];
            chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    (sizes[i], *t),
                    8,
                    c.filled(),
                )))
                .map_err(|e| err(&e))?
                .label(legend_name(&rows[i]))
                .legend(move |(x, y)| TriangleMarker::new((x, y), 6, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(label_style)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn legend_name(r: &Row) -> String {
    let n = short_name(&r.file);
    if r.is_baseline {
        format!("{n} (baseline)")
    } else {
        n
    }
}

/// A file name without its directory and `.gguf`, for legends.
pub fn short_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.strip_suffix(".gguf").unwrap_or(base).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, mb: u64, kld: Option<f64>, base: bool) -> Row {
        let mut acc = crate::eval::kld::KldAccumulator::default();
        if let Some(k) = kld {
            for _ in 0..20 {
                acc.add(crate::eval::kld::PositionCmp {
                    nll: 2.0,
                    nll_base: 2.0,
                    kld: k,
                    same_top: true,
                });
            }
        }
        Row {
            file: name.into(),
            recipe: "Q4_1 100%".into(),
            size_bytes: mb << 20,
            bits_per_weight: 4.5,
            ppl: Estimate {
                value: 20.0,
                stderr: 1.0,
            },
            kld: kld.map(|_| acc.stats()),
            pp_tokens_per_second: Some(100.0),
            tg_tokens_per_second: Some(30.0 + mb as f64 / 10.0),
            peak_rss_bytes: Some(200 << 20),
            is_baseline: base,
        }
    }

    #[test]
    fn markdown_has_one_row_per_file_with_its_numbers() {
        let rows = [
            row("base.gguf", 200, None, true),
            row("q4.gguf", 90, Some(0.0421), false),
        ];
        let md = markdown(&rows, "text.txt", 512, 10);
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(table.len(), 3, "{md}");
        assert!(table[1].contains("base.gguf (baseline)") && table[1].contains("200.0 MiB"));
        assert!(table[2].contains("0.04210 ± 0.00000") && table[2].contains("90.0 MiB"));
        assert!(md.contains("report.svg"));
    }

    #[test]
    fn svg_chart_names_every_file() {
        let dir = std::env::temp_dir().join(format!("ledge-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("report.svg");
        let rows = [
            row("models/base.gguf", 200, None, true),
            row("q4.gguf", 90, Some(0.04), false),
            row("q2.gguf", 60, Some(0.3), false),
        ];
        svg(&rows, &p).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..100.min(s.len())]);
        for name in ["base", "q4", "q2", "mean KLD", "file size (MiB)"] {
            assert!(s.contains(name), "{name} missing from the chart");
        }
    }
}
