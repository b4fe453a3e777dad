//! An SVG plot of the client's acknowledged writes around a fault: acknowledgements
//! per 100 ms as bars coloured by the server that acknowledged them, against seconds
//! relative to the fault, with a vertical line for each event (fault, lock taken,
//! promoted, DNS routed, first write). Written by hand: it is simple text.

use std::fmt::Write as _;

/// The width of a bar, in seconds.
pub const BUCKET: f64 = 0.1;

/// What to draw.
#[derive(Clone, Debug, Default)]
pub struct Plot {
    /// The heading.
    pub title: String,
    /// A second line under it (settings, the measured unavailability).
    pub subtitle: String,
    /// The servers, for the legend (index = series).
    pub series: Vec<String>,
    /// Every acknowledged write: seconds relative to the fault, and its series.
    pub acks: Vec<(f64, usize)>,
    /// The events: seconds relative to the fault, and a name.
    pub markers: Vec<(f64, String)>,
    /// The x axis' range, in seconds relative to the fault.
    pub x_range: (f64, f64),
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 470.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 64.0;
const PLOT_HEIGHT: f64 = 280.0;
const SERIES_COLORS: [&str; 4] = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"];
const MARKER_COLORS: [&str; 7] = [
    "#d62728", "#ff7f0e", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#000000",
];

/// `&`, `<`, `>` and quotes escaped for SVG text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about `target` ticks over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

impl Plot {
    /// Acknowledgements per bucket and series: `counts[bucket][series]`.
    fn buckets(&self) -> Vec<Vec<usize>> {
        let (x0, x1) = self.x_range;
        let n = (((x1 - x0) / BUCKET).ceil() as usize).max(1);
        let mut counts = vec![vec![0usize; self.series.len().max(1)]; n];
        for (t, s) in &self.acks {
            if *t < x0 || *t >= x1 {
                continue;
            }
            let b = (((t - x0) / BUCKET) as usize).min(n - 1);
            if let Some(c) = counts[b].get_mut(*s) {
                *c += 1;
            }
        }
        counts
    }

    /// The plot as an SVG document.
    pub fn svg(&self) -> String {
        let (x0, x1) = self.x_range;
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let plot_width = WIDTH - LEFT - RIGHT;
        let x = |t: f64| LEFT + (t - x0) / (x1 - x0) * plot_width;
        let counts = self.buckets();
        let peak = counts
            .iter()
            .map(|c| c.iter().sum::<usize>())
            .max()
            .unwrap_or(0)
            .max(10);
        let y_step = tick_step(peak as f64, 4.0);
        let y_max = (peak as f64 / y_step).ceil() * y_step;
        let bottom = TOP + PLOT_HEIGHT;
        let y = |v: f64| bottom - v / y_max * PLOT_HEIGHT;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="42" fill="#444">{}</text>"##,
            escape(&self.subtitle)
        );
        // Grid and axes.
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{v}</text>"##,
                y(v),
                WIDTH - RIGHT,
                LEFT - 6.0,
                y(v) + 4.0,
            );
            v += y_step;
        }
        let x_step = tick_step(x1 - x0, 12.0);
        let mut t = (x0 / x_step).ceil() * x_step;
        while t <= x1 + 1e-9 {
            let label = if t.abs() < 1e-9 {
                "0".to_owned()
            } else {
                format!("{t:+}")
            };
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1:.1}" stroke="#999"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{label}</text>"##,
                x(t),
                bottom + 5.0,
                bottom + 18.0,
            );
            t += x_step;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{0}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{0:.1}" y="{1:.1}" text-anchor="middle">seconds relative to the fault</text>"#,
            LEFT + plot_width / 2.0,
            bottom + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {0:.1}) rotate(-90)" text-anchor="middle">acknowledged writes per 100 ms</text>"#,
            TOP + PLOT_HEIGHT / 2.0
        );
        // Bars, stacked by series.
        let bar = plot_width / counts.len() as f64;
        for (b, per_series) in counts.iter().enumerate() {
            let left = LEFT + b as f64 * bar;
            let mut stacked = 0usize;
            for (series, count) in per_series.iter().enumerate() {
                if *count == 0 {
                    continue;
                }
                let top = y((stacked + count) as f64);
                let height = y(stacked as f64) - top;
                let _ = writeln!(
                    s,
                    r#"<rect x="{left:.2}" y="{top:.2}" width="{0:.2}" height="{height:.2}" fill="{1}"/>"#,
                    (bar - 0.5).max(0.5),
                    SERIES_COLORS[series % SERIES_COLORS.len()]
                );
                stacked += count;
            }
        }
        // Event lines.
        let mut markers: Vec<&(f64, String)> = self.markers.iter().collect();
        markers.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (i, (t, _)) in markers.iter().enumerate() {
            if *t < x0 || *t > x1 {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<line x1="{0:.2}" y1="{TOP}" x2="{0:.2}" y2="{bottom}" stroke="{1}" stroke-width="1.5" stroke-dasharray="5 3"/>"#,
                x(*t),
                MARKER_COLORS[i % MARKER_COLORS.len()]
            );
        }
        // Legend: servers, then events with their times.
        let mut lx = LEFT;
        let ly = bottom + 58.0;
        for (i, name) in self.series.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="{0:.1}" width="12" height="12" fill="{1}"/><text x="{2:.1}" y="{ly:.1}">acknowledged by {3}</text>"#,
                ly - 10.0,
                SERIES_COLORS[i % SERIES_COLORS.len()],
                lx + 16.0,
                escape(name)
            );
            lx += 16.0 + 7.0 * (16 + name.len()) as f64 + 14.0;
        }
        let per_row = 3;
        for (i, (t, name)) in markers.iter().enumerate() {
            let col = (i % per_row) as f64;
            let row = (i / per_row) as f64;
            let mx = LEFT + col * 280.0;
            let my = ly + 22.0 + row * 18.0;
            let _ = writeln!(
                s,
                r#"<line x1="{mx:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{2}" stroke-width="2" stroke-dasharray="5 3"/><text x="{3:.1}" y="{my:.1}">{4} ({t:+.3} s)</text>"#,
                my - 4.0,
                mx + 22.0,
                MARKER_COLORS[i % MARKER_COLORS.len()],
                mx + 28.0,
                escape(&shorten(name, 32))
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// `text`, cut to `max` characters with an ellipsis, to keep labels and table
/// rows short.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(3)).collect();
        format!("{}...", cut.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_svg_with_bars_and_markers() {
        let plot = Plot {
            title: "node-crash <run 1>".into(),
            subtitle: "unavailability 5.2 s".into(),
            series: vec!["node1".into(), "node2".into()],
            acks: (0..200)
                .map(|i| (-2.0 + i as f64 * 0.01, 0))
                .chain((0..100).map(|i| (5.0 + i as f64 * 0.01, 1)))
                .collect(),
            markers: vec![(0.0, "fault".into()), (5.0, "first write".into())],
            x_range: (-2.0, 7.0),
        };
        let svg = plot.svg();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("node-crash &lt;run 1&gt;"));
        assert!(svg.contains("fault (+0.000 s)"));
        assert!(svg.contains("first write (+5.000 s)"));
        assert!(svg.contains(SERIES_COLORS[1]));
        // 20 buckets of node1 before the fault and 10 of node2 after it.
        assert_eq!(svg.matches("<rect ").count(), 1 + 2 + 20 + 10);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0, 4.0), 5.0);
        assert_eq!(tick_step(9.0, 12.0), 1.0);
        assert_eq!(tick_step(30.0, 12.0), 5.0);
    }
}
