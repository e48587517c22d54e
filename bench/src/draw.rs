//! Drawing the charts of [`charts`](crate::charts) as SVG, with plotters.
//!
//! plotters is built with its SVG backend only and no font feature: text is written as SVG
//! `<text>` in the `sans-serif` family, laid out by plotters' own estimate of its width, and
//! the viewer renders it with its fonts. Nothing here needs fontconfig or FreeType.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::charts::{ChartData, Taken};
use crate::workload::BenchResult;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;
/// The strip under each chart that says where its figures come from.
const FOOTER: u32 = 44;
const FONT: &str = "sans-serif";

const OURS: RGBColor = RGBColor(31, 119, 180);
const FLOOR: RGBColor = RGBColor(255, 127, 14);
const RAW: RGBColor = RGBColor(110, 110, 110);
const THIRD: RGBColor = RGBColor(44, 160, 44);

/// Draws one chart of `ChartData` into the file at the path.
type DrawChart = fn(&ChartData, &Path) -> BenchResult;

/// Draws every chart into `out`; returns the files written.
pub(crate) fn all(data: &ChartData, out: &Path) -> BenchResult<Vec<PathBuf>> {
    let charts: [(&str, DrawChart); 3] = [
        ("writers.svg", writers),
        ("open.svg", open),
        ("propagation.svg", propagation),
    ];
    let mut written = Vec::new();
    for (name, draw) in charts {
        let path = out.join(name);
        draw(data, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// The value below which `fraction` of the sorted `times` lie (nearest rank).
pub(crate) fn quantile(sorted: &[f64], fraction: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A white canvas at `path`, split into the chart's area and its footer, which says `taken`.
fn canvas<'a>(
    path: &'a Path,
    taken: &Taken,
    what: &str,
) -> BenchResult<DrawingArea<SVGBackend<'a>, Shift>> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (chart, footer) = root.split_vertically(HEIGHT - FOOTER);
    let style = (FONT, 13).into_font().color(&RGBColor(90, 90, 90));
    let lines = [
        format!(
            "{what}; commit {}, {} runs; load average {} before, {} after",
            taken.commit, taken.runs, taken.load_before, taken.load_after
        ),
        format!(
            "{}; fsync {:.0}/{:.0} µs",
            taken.machine, taken.fsync_micros[0], taken.fsync_micros[1]
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        footer.draw(&Text::new(
            line.as_str(),
            (12, 6 + 18 * i as i32),
            style.clone(),
        ))?;
    }
    Ok(chart)
}

/// A line with a marker at every point, labelled in the legend.
fn curve<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: Vec<(X::ValueType, Y::ValueType)>,
    color: RGBColor,
    label: &str,
) -> BenchResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    let line = ShapeStyle::from(&color).stroke_width(2);
    chart
        .draw_series(LineSeries::new(points.clone(), line))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
    chart.draw_series(
        points
            .into_iter()
            .map(|point| Circle::new(point, 3, color.filled())),
    )?;
    Ok(())
}

fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> BenchResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

/// Inserts per second against concurrent writers, on a log2 axis (1, 2, 4, ... writers).
fn writers(data: &ChartData, path: &Path) -> BenchResult {
    let what = format!(
        "{} durable inserts per point, distinct keys, each insert awaited; medians",
        data.taken.writes_per_point
    );
    let area = canvas(path, &data.taken, &what)?;
    let most = data
        .writers
        .iter()
        .flat_map(|point| [point.ours, point.floor, point.raw])
        .flatten()
        .fold(1.0, f64::max);
    let last = data.writers.last().map_or(1, |point| point.writers) as f64;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "Writers: our map against the group-commit floor",
            (FONT, 22),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(76)
        .build_cartesian_2d(-0.25..last.log2() + 0.25, 0.0..most * 1.12)?;
    chart
        .configure_mesh()
        .x_labels(data.writers.len() + 1)
        .x_label_formatter(&|x| {
            let rounded = x.round();
            if (x - rounded).abs() < 1e-6 && rounded >= 0.0 {
                format!("{}", 2f64.powf(rounded))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| match *y {
            0.0 => "0".to_owned(),
            y => crate::driver::number(y),
        })
        .x_desc("concurrent writers (tokio tasks; threads for raw rusqlite)")
        .y_desc("durable inserts per second")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let series = |figure: fn(&crate::charts::WritersPoint) -> Option<f64>| {
        data.writers
            .iter()
            .filter_map(|point| figure(point).map(|y| ((point.writers as f64).log2(), y)))
            .collect::<Vec<_>>()
    };
    curve(
        &mut chart,
        series(|point| point.floor),
        FLOOR,
        "group-commit floor: 1 thread, 1 transaction per round of one write per writer",
    )?;
    curve(
        &mut chart,
        series(|point| point.ours),
        OURS,
        "our map (SQLite, Durability::Full)",
    )?;
    curve(
        &mut chart,
        series(|point| point.raw),
        RAW,
        "raw rusqlite: N threads, one mutex-guarded connection, 1 transaction per insert",
    )?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    area.present()?;
    Ok(())
}

/// `10k`, `1M`.
fn rows_text(rows: f64) -> String {
    match rows {
        r if r >= 1e6 => format!("{}M", r / 1e6),
        r if r >= 1e3 => format!("{}k", r / 1e3),
        r => format!("{r}"),
    }
}

/// Open time and peak memory against the table's size, side by side, log-log.
fn open(data: &ChartData, path: &Path) -> BenchResult {
    let area = canvas(
        path,
        &data.taken,
        "String keys, ~118-byte JSON values, tables in the page cache; medians",
    )?;
    let (title, panels) = area.split_vertically(40);
    title.draw(&Text::new(
        "Opening a table: time and memory against its size",
        (WIDTH as i32 / 2 - 250, 10),
        (FONT, 22),
    ))?;
    let (left, right) = panels.split_horizontally(WIDTH / 2);
    let rows: Vec<f64> = data.open.iter().map(|point| point.rows as f64).collect();
    let (fewest, most) = (
        rows.iter().copied().fold(f64::INFINITY, f64::min),
        rows.iter().copied().fold(1.0, f64::max),
    );
    type Figure = fn(&crate::charts::OpenPoint) -> Option<f64>;
    let panel = |area: &DrawingArea<SVGBackend<'_>, Shift>,
                 caption: &str,
                 y_desc: &str,
                 figures: [(Figure, RGBColor, &str); 2]|
     -> BenchResult {
        let series: Vec<Vec<(f64, f64)>> = figures
            .iter()
            .map(|(figure, _, _)| {
                data.open
                    .iter()
                    .filter_map(|point| figure(point).map(|y| (point.rows as f64, y)))
                    .collect()
            })
            .collect();
        let ys = series.iter().flatten().map(|(_, y)| *y);
        let low = ys.clone().fold(f64::INFINITY, f64::min).max(1e-6);
        let high = ys.fold(low, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 17))
            .margin(14)
            .x_label_area_size(46)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (fewest / 1.5..most * 1.5).log_scale(),
                (low / 1.6..high * 1.6).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| rows_text(*x))
            .y_label_formatter(&|y| crate::driver::number(*y))
            .x_desc("entries in the table (log scale)")
            .y_desc(y_desc)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for ((_, color, label), points) in figures.iter().zip(series) {
            curve(&mut chart, points, *color, label)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    };
    panel(
        &left,
        "Open: load every entry into memory",
        "seconds (log scale)",
        [
            (|point| point.ours_secs, OURS, "PersistentMap::open"),
            (
                |point| point.raw_secs,
                RAW,
                "raw rusqlite: SELECT, parse, decode",
            ),
        ],
    )?;
    panel(
        &right,
        "Peak memory of the process",
        "MiB (log scale)",
        [
            (|point| point.ours_rss_mib, OURS, "our map"),
            (
                |point| point.hashmap_rss_mib,
                RAW,
                "HashMap loaded by raw rusqlite",
            ),
        ],
    )?;
    area.present()?;
    Ok(())
}

/// The left edge of the propagation chart's log axis, in milliseconds.
const EDGE_MS: f64 = 0.01;

/// The cumulative distribution of propagation times, on a log axis of milliseconds.
fn propagation(data: &ChartData, path: &Path) -> BenchResult {
    let what = format!(
        "{} writes per run, one at a time, 1,000 entries, every run's times together; {}",
        data.taken.propagation_writes,
        match data.taken.postgres.strip_prefix("not measured: ") {
            Some(reason) => format!("no PostgreSQL curve ({reason})"),
            None => format!("PostgreSQL: {}", short_server(&data.taken.postgres)),
        }
    );
    // A log axis has no room for the times at or below zero (the other instance's `get`
    // returned the value before `insert` returned): they are drawn at its left edge.
    let what = format!("{what}; times under {EDGE_MS} ms (down to a get before the insert returned) at the left edge");
    let area = canvas(path, &data.taken, &what)?;
    let all = data
        .propagation
        .iter()
        .flat_map(|distribution| distribution.times_ms.iter().map(|ms| ms.max(EDGE_MS)));
    let fastest = all.clone().fold(f64::INFINITY, f64::min).max(EDGE_MS);
    let slowest = all.fold(fastest, f64::max);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "Propagation: from an acknowledged insert to another instance's get",
            (FONT, 22),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d((fastest / 1.3..slowest * 1.3).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| crate::driver::number(*x))
        .y_label_formatter(&|y| format!("{y:.0}%"))
        .x_desc("milliseconds (log scale)")
        .y_desc("writes seen within that time")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let colors = [THIRD, OURS, FLOOR, RAW];
    for (distribution, color) in data.propagation.iter().zip(colors.iter().cycle()) {
        let times = &distribution.times_ms;
        let label = match quantile(times, 0.5).zip(quantile(times, 0.99)) {
            Some((median, p99)) => format!(
                "{}: median {} ms, p99 {} ms",
                distribution.label,
                crate::driver::number(median),
                crate::driver::number(p99)
            ),
            None => distribution.label.clone(),
        };
        let line = ShapeStyle::from(color).stroke_width(2);
        let edged: Vec<f64> = times.iter().map(|ms| ms.max(EDGE_MS)).collect();
        chart
            .draw_series(LineSeries::new(cumulative(&edged), line))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    area.present()?;
    Ok(())
}

/// The step curve of the sorted `times`: at most 400 steps, enough for the eye.
fn cumulative(times: &[f64]) -> Vec<(f64, f64)> {
    let n = times.len();
    let step = n.div_ceil(400).max(1);
    let mut points = Vec::new();
    for (i, time) in times.iter().enumerate().step_by(step) {
        points.push((*time, (i + 1) as f64 / n as f64 * 100.0));
    }
    if let Some(last) = times.last() {
        points.push((*last, 100.0));
    }
    points
}

/// "PostgreSQL 15.20" from the probe's longer description of the server.
fn short_server(server: &str) -> String {
    server
        .split(" (")
        .next()
        .unwrap_or(server)
        .split(" at ")
        .next()
        .unwrap_or(server)
        .to_owned()
}
