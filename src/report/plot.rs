//! Drawing the report's charts as SVG with `plotters` (SVG backend: text stays `<text>`, lines are
//! `<polyline>`, cells `<rect>`, so the browser renders them and the tests can inspect them).
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

pub const WIDTH: u32 = 700;
pub const HEIGHT: u32 = 360;
/// A log axis only over positive values spanning at least this ratio of largest to smallest: plotters
/// labels powers of ten, so a narrower range would get no tick label at all; zeros need a linear one.
const LOG_MIN_RATIO: f64 = 100.0;

/// Tableau 10: distinguishable colours, one per run (several runs) or per metric (one run).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One curve: a metric of a run.
#[derive(Debug, Clone)]
pub struct Series {
    /// The run's label and the metric's name, as the legend shows them.
    pub run: String,
    pub metric: String,
    pub run_index: usize,
    pub metric_index: usize,
    /// `(x, y)`, finite, x ascending.
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct LineChart {
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A log axis where the values allow it (see [`LOG_MIN_RATIO`]).
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Several runs: colour by run, dash pattern by metric; one run: colour by metric.
    pub colour_by_run: bool,
}

/// Sigma per layer and step of one ALP run.
#[derive(Debug, Clone)]
pub struct HeatMap {
    pub id: String,
    pub title: String,
    pub steps: Vec<i64>,
    /// `values[layer][step index]`, NaN where the step lacks it.
    pub values: Vec<Vec<f64>>,
}

/// Series of at most this many points get a marker at each point.
const MARKERS_UP_TO: usize = 40;

/// Dash and gap lengths (px) of the patterns that tell a run's metrics apart; `(0, 0)` is solid.
const DASHES: [(i32, i32); 5] = [(0, 0), (8, 5), (2, 4), (14, 5), (5, 2)];

/// A series' colour and dash pattern.
fn look(chart: &LineChart, s: &Series) -> (RGBColor, (i32, i32)) {
    if chart.colour_by_run {
        (
            PALETTE[s.run_index % PALETTE.len()],
            DASHES[s.metric_index % DASHES.len()],
        )
    } else {
        (PALETTE[s.metric_index % PALETTE.len()], DASHES[0])
    }
}

/// The legend's entries: one per series for one run; for several runs one per run (its colour)
/// and, when the chart draws several metrics, one per metric (its dash pattern, in grey).
fn legend_entries(chart: &LineChart) -> Vec<(String, RGBColor, (i32, i32))> {
    let mut entries: Vec<(String, RGBColor, (i32, i32))> = Vec::new();
    let mut push = |entry: (String, RGBColor, (i32, i32))| {
        if !entries.iter().any(|e| e.0 == entry.0) {
            entries.push(entry);
        }
    };
    if !chart.colour_by_run {
        for s in &chart.series {
            push((s.metric.clone(), look(chart, s).0, DASHES[0]));
        }
        return entries;
    }
    for s in &chart.series {
        push((s.run.clone(), look(chart, s).0, DASHES[0]));
    }
    let mut metrics: Vec<&Series> = chart.series.iter().collect();
    metrics.sort_by_key(|s| s.metric_index);
    metrics.dedup_by_key(|s| s.metric_index);
    if metrics.len() > 1 {
        for s in metrics {
            push((s.metric.clone(), RGBColor(90, 90, 90), look(chart, s).1));
        }
    }
    entries
}

/// Legend entries per row below the chart.
const LEGEND_COLUMNS: usize = 2;
const LEGEND_ROW: u32 = 22;

fn legend_height(entries: usize) -> u32 {
    entries.div_ceil(LEGEND_COLUMNS) as u32 * LEGEND_ROW + 10
}

/// Draws the legend in its own area under the chart, so it never hides a curve.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    entries: &[(String, RGBColor, (i32, i32))],
) -> Result<(), String> {
    let column_width = (WIDTH as i32 - 90) / LEGEND_COLUMNS as i32;
    for (i, (label, colour, (dash, gap))) in entries.iter().enumerate() {
        let x = 80 + (i % LEGEND_COLUMNS) as i32 * column_width;
        let y = 10 + (i / LEGEND_COLUMNS) as i32 * LEGEND_ROW as i32;
        let style = colour.stroke_width(3);
        if *dash == 0 {
            area.draw(&PathElement::new(vec![(x, y), (x + 30, y)], style))
                .map_err(err)?;
        } else {
            let mut at = x;
            while at < x + 30 {
                let end = (at + dash).min(x + 30);
                area.draw(&PathElement::new(vec![(at, y), (end, y)], style))
                    .map_err(err)?;
                at = end + gap;
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (x + 38, y - 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(err)?;
    }
    Ok(())
}

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// A range around `lo..hi` that is never empty: a flat curve gets some room around its value.
fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if log {
        if hi > lo * 1.0001 {
            (lo / 1.2, hi * 1.2)
        } else {
            (lo / 2.0, hi * 2.0)
        }
    } else if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// The chart as a standalone `<svg>` element.
pub fn line_chart_svg(chart: &LineChart) -> Result<String, String> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = bounds(points().map(|p| p.0));
    let (x0, x1) = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let (y0, y1) = bounds(points().map(|p| p.1));
    let log_y = chart.log_y && y0 > 0.0 && y1 / y0 >= LOG_MIN_RATIO;
    let (y0, y1) = padded(y0, y1, log_y);
    let y_label = if log_y {
        format!("{} (log scale)", chart.y_label)
    } else {
        chart.y_label.clone()
    };
    // Whole steps only: at most 8 labels, and none between two steps of a short run.
    let x_labels = ((x1 - x0).round() as usize + 1).clamp(2, 8);
    let entries = legend_entries(chart);
    let height = HEIGHT + legend_height(entries.len());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot_area, legend_area) = root.split_vertically(HEIGHT);
        draw_legend(&legend_area, &entries)?;
        let mut builder = ChartBuilder::on(&plot_area);
        builder
            .caption(&chart.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(78);
        let axes = Axes {
            y_label: &y_label,
            x_labels,
        };
        if log_y {
            let ctx = builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(err)?;
            draw_lines(ctx, chart, &axes)?;
        } else {
            let ctx = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
            draw_lines(ctx, chart, &axes)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

struct Axes<'a> {
    y_label: &'a str,
    x_labels: usize,
}

/// A tick label: whole numbers as such, others with 4 significant digits.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e6 {
        format!("{}", v.round() as i64)
    } else {
        super::markdown::number(Some(*v))
    }
}

fn draw_lines<'a, Y>(
    mut ctx: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    chart: &LineChart,
    axes: &Axes,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(axes.y_label)
        .x_labels(axes.x_labels)
        .y_labels(8)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(err)?;
    for s in &chart.series {
        let (colour, dash) = look(chart, s);
        let style = colour.stroke_width(2);
        if dash.0 == 0 {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(err)?
        } else {
            ctx.draw_series(DashedLineSeries::new(
                s.points.iter().copied(),
                dash.0,
                dash.1,
                style,
            ))
            .map_err(err)?
        };
        // Markers on short series, so a one-step run and the few evaluated steps are visible;
        // on long ones they would only blur the line.
        if s.points.len() <= MARKERS_UP_TO {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The heat map as a standalone `<svg>`: steps across, layers up, viridis from the smallest sigma
/// (dark) to the largest (yellow), with a colour bar.
pub fn heat_map_svg(map: &HeatMap) -> Result<String, String> {
    let (lo, hi) = bounds(
        map.values
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite()),
    );
    let hi = if hi > lo {
        hi
    } else {
        lo + lo.abs().max(1e-12)
    };
    let first = *map.steps.first().ok_or("no steps")? as f64;
    let last = *map.steps.last().ok_or("no steps")? as f64;
    let layers = map.values.len();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, bar) = root.split_horizontally(WIDTH - 110);
        let mut ctx = ChartBuilder::on(&plot)
            .caption(&map.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(60)
            .build_cartesian_2d(first - 0.5..last + 0.5, -0.5..layers as f64 - 0.5)
            .map_err(err)?;
        ctx.configure_mesh()
            .disable_mesh()
            .x_desc("step")
            .y_desc("layer")
            .x_labels(((last - first).round() as usize + 1).clamp(2, 8))
            .x_label_formatter(&tick)
            // Layer l's cell is centred on l: whole-number ticks label layers.
            .y_labels(layers.clamp(2, 10))
            .y_label_formatter(&tick)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(err)?;
        // Cell edges: halfway to the neighbouring steps, so uneven step spacing tiles too.
        let edges: Vec<f64> = (0..=map.steps.len())
            .map(|i| match i {
                0 => first - 0.5,
                i if i == map.steps.len() => last + 0.5,
                i => (map.steps[i - 1] + map.steps[i]) as f64 / 2.0,
            })
            .collect();
        for (layer, row) in map.values.iter().enumerate() {
            ctx.draw_series(row.iter().enumerate().filter(|(_, v)| v.is_finite()).map(
                |(i, &v)| {
                    let colour = ViridisRGB.get_color_normalized(v, lo, hi);
                    Rectangle::new(
                        [
                            (edges[i], layer as f64 - 0.5),
                            (edges[i + 1], layer as f64 + 0.5),
                        ],
                        colour.filled(),
                    )
                },
            ))
            .map_err(err)?;
        }
        // The colour bar: 20 bands, the largest value on top.
        let bar = bar.margin(40, 50, 10, 40);
        let (w, h) = bar.dim_in_pixel();
        let bands = 20;
        for b in 0..bands {
            let t = 1.0 - (b as f64 + 0.5) / bands as f64;
            let y = (b * h as usize / bands) as i32;
            let y1 = ((b + 1) * h as usize / bands) as i32;
            bar.draw(&Rectangle::new(
                [(0, y), (20, y1)],
                ViridisRGB
                    .get_color_normalized(lo + t * (hi - lo), lo, hi)
                    .filled(),
            ))
            .map_err(err)?;
        }
        let font = ("sans-serif", 15).into_font();
        bar.draw(&Text::new(format!("{hi:.3e}"), (0, -16), font.clone()))
            .map_err(err)?;
        bar.draw(&Text::new(format!("{lo:.3e}"), (0, h as i32 + 4), font))
            .map_err(err)?;
        let _ = w;
        root.present().map_err(err)?;
    }
    Ok(svg)
}
