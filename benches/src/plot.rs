//! SVG charts: throughput and p99 latency against concurrency, for puts (W) and
//! linearizable gets (C), per system.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::matrix::{RowKind, RowSpec, RunRecord};
use crate::report::counted_runs;
use crate::stats::Spread;
use crate::target::System;
use crate::workload::Workload;

/// One curve: (concurrency, median ops/s, median p99 µs), by concurrency.
pub type Curve = Vec<(usize, f64, f64)>;

/// The curves of the plain put and get rows (default value size, linearizable, default
/// regions), keyed by system and workload.
pub fn curves(rows: &[RowSpec], runs: &[RunRecord]) -> BTreeMap<(System, Workload), Curve> {
    let mut out: BTreeMap<(System, Workload), Curve> = BTreeMap::new();
    let plain = rows.iter().filter(|r| {
        r.kind == RowKind::Throughput
            && matches!(r.workload, Workload::W | Workload::C)
            && !r.stale_reads
            && r.value_size.is_none()
            && r.regions.is_none()
    });
    for row in plain {
        for &system in row.systems() {
            let rs = counted_runs(runs, &row.id, system);
            let ops = Spread::of(&rs.iter().map(|r| r.output.ops_per_sec).collect::<Vec<_>>());
            let p99 = Spread::of(&rs.iter().map(|r| r.output.latency.p99_us as f64).collect::<Vec<_>>());
            if let (Some(ops), Some(p99)) = (ops, p99) {
                out.entry((system, row.workload)).or_default().push((row.concurrency, ops.median, p99.median));
            }
        }
    }
    for curve in out.values_mut() {
        curve.sort_by_key(|p| p.0);
    }
    out
}

fn label(system: System, workload: Workload) -> String {
    let what = if workload == Workload::W { "puts" } else { "gets" };
    format!("{system} {what}")
}

fn color(system: System, workload: Workload) -> RGBColor {
    match (system, workload) {
        (System::Tessera, Workload::W) => RGBColor(0x1f, 0x77, 0xb4),
        (System::Tessera, _) => RGBColor(0x17, 0xbe, 0xcf),
        (System::Etcd, Workload::W) => RGBColor(0xd6, 0x27, 0x28),
        (System::Etcd, _) => RGBColor(0xff, 0x7f, 0x0e),
    }
}

/// Draws `curves` (y: ops/s when `throughput`, else p99 in ms) into an SVG at `path`.
pub fn draw(path: &Path, curves: &BTreeMap<(System, Workload), Curve>, throughput: bool) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let y_of = |p: &(usize, f64, f64)| if throughput { p.1 } else { p.2 / 1000.0 };
    let points = curves.values().flatten();
    let min_c = points.clone().map(|p| p.0).min().unwrap_or(1).max(1) as f64;
    let max_c = points.clone().map(|p| p.0).max().unwrap_or(1).max(2) as f64;
    let max_y = points.map(y_of).fold(0.0f64, f64::max).max(1e-3) * 1.15;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let caption =
        if throughput { "Throughput against operations in flight" } else { "p99 latency against operations in flight" };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((min_c / 1.5..max_c * 1.5).log_scale(), 0f64..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("operations in flight (log scale)")
        .y_desc(if throughput { "ops/s" } else { "p99 latency, ms" })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| if throughput { format!("{y:.0}") } else { format!("{y:.1}") })
        .draw()
        .map_err(|e| err(&e))?;
    for (&(system, workload), curve) in curves {
        let c = color(system, workload);
        let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.0 as f64, y_of(p))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label(system, workload))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut curves = BTreeMap::new();
        curves.insert((System::Tessera, Workload::W), vec![(1, 100.0, 900.0), (64, 5000.0, 20_000.0)]);
        curves.insert((System::Etcd, Workload::C), vec![(64, 9000.0, 8000.0)]);
        for throughput in [true, false] {
            let path = dir.path().join(format!("{throughput}.svg"));
            draw(&path, &curves, throughput).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("Tessera puts") && svg.contains("etcd gets"));
        }
    }
}
