//! The fleet benchmark's SVG: three panels against the number of clusters:
//! the failover time (each run and the median, with the goal's limit), CPU
//! (etcd's three members, the agents), and memory (etcd, the agents).

use std::fmt::Write as _;

use super::report::{FleetFigures, Resources, GOAL_RATIO};

/// One line (or set of points) of a panel.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
    /// Joined by a line (else dots only).
    line: bool,
}

/// One chart.
struct Panel {
    title: &'static str,
    unit: &'static str,
    series: Vec<Series>,
    /// A dashed horizontal limit and its label.
    limit: Option<(f64, String)>,
}

const PANEL_WIDTH: f64 = 380.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 56.0;
const MARGIN_TOP: f64 = 70.0;
const GAP: f64 = 40.0;

/// `(max, step)`: a round upper bound and tick step for values up to `peak`.
fn axis(peak: f64) -> (f64, f64) {
    let peak = if peak > 0.0 { peak } else { 1.0 };
    let raw = peak / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((peak / step).ceil() * step, step)
}

impl Panel {
    fn draw(&self, s: &mut String, left: f64, x_max: f64) {
        let bottom = MARGIN_TOP + PANEL_HEIGHT;
        let peak = self
            .series
            .iter()
            .flat_map(|series| series.points.iter().map(|p| p.1))
            .chain(self.limit.iter().map(|l| l.0))
            .fold(0.0, f64::max);
        let (y_max, y_step) = axis(peak);
        let (x_max, x_step) = axis(x_max);
        let x = |v: f64| left + v / x_max * PANEL_WIDTH;
        let y = |v: f64| bottom - v / y_max * PANEL_HEIGHT;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{0}" font-weight="bold">{1} ({2})</text>"#,
            MARGIN_TOP - 12.0,
            self.title,
            self.unit
        );
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{v}</text>"##,
                y(v),
                left + PANEL_WIDTH,
                left - 5.0,
                y(v) + 4.0
            );
            v += y_step;
        }
        let mut v = 0.0;
        while v <= x_max + 1e-9 {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1:.1}" stroke="#999"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{v}</text>"##,
                x(v),
                bottom + 5.0,
                bottom + 18.0
            );
            v += x_step;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{bottom}" x2="{0}" y2="{bottom}" stroke="#333"/><line x1="{left}" y1="{MARGIN_TOP}" x2="{left}" y2="{bottom}" stroke="#333"/><text x="{1:.1}" y="{2:.1}" text-anchor="middle">clusters (3 agents each)</text>"##,
            left + PANEL_WIDTH,
            left + PANEL_WIDTH / 2.0,
            bottom + 34.0
        );
        if let Some((limit, label)) = &self.limit {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#d62728" stroke-dasharray="5 3"/><text x="{1:.1}" y="{2:.1}" text-anchor="end" fill="#d62728">{label}</text>"##,
                y(*limit),
                left + PANEL_WIDTH,
                y(*limit) - 4.0
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            if series.line && series.points.len() > 1 {
                let path: Vec<String> = series
                    .points
                    .iter()
                    .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    path.join(" "),
                    series.color
                );
            }
            for (px, py) in &series.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="{}" fill="{}"/>"#,
                    x(*px),
                    y(*py),
                    if series.line { 3.5 } else { 2.5 },
                    series.color
                );
            }
            let ly = bottom + 54.0 + i as f64 * 16.0;
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{0:.1}" width="12" height="12" fill="{1}"/><text x="{2:.1}" y="{ly:.1}">{3}</text>"#,
                ly - 10.0,
                series.color,
                left + 16.0,
                series.name
            );
        }
    }
}

/// The fleet's plot, as an SVG document.
pub fn fleet_svg(sizes: &[FleetFigures]) -> String {
    let done: Vec<&FleetFigures> = sizes.iter().filter(|s| s.error.is_none()).collect();
    let x_max = done.iter().map(|s| s.clusters as f64).fold(1.0, f64::max);
    let n = |s: &FleetFigures| s.clusters as f64;
    let each_run = done
        .iter()
        .flat_map(|s| {
            s.failovers
                .iter()
                .map(|r| (n(s), r.promoted_ms as f64 / 1000.0))
        })
        .collect();
    let medians = |f: fn(&FleetFigures) -> Option<f64>| -> Vec<(f64, f64)> {
        done.iter()
            .filter_map(|s| f(s).map(|v| (n(s), v / 1000.0)))
            .collect()
    };
    let window = |writing: bool, f: fn(&Resources) -> f64| -> Vec<(f64, f64)> {
        done.iter()
            .filter_map(|s| {
                let r = if writing { &s.writing } else { &s.rest };
                r.as_ref().map(|r| (n(s), f(r)))
            })
            .collect()
    };
    let base = done
        .iter()
        .find(|s| s.clusters == 1)
        .and_then(|s| s.failover_median_ms());
    let panels = [
        Panel {
            title: "failover time",
            unit: "s",
            series: vec![
                Series {
                    name: "each run: crash to promoted",
                    color: "#9ecae1",
                    points: each_run,
                    line: false,
                },
                Series {
                    name: "median: crash to promoted",
                    color: "#1f77b4",
                    points: medians(FleetFigures::failover_median_ms),
                    line: true,
                },
                Series {
                    name: "median: crash to lock gone from etcd",
                    color: "#2ca02c",
                    points: medians(FleetFigures::lock_expired_median_ms),
                    line: true,
                },
            ],
            limit: base.map(|ms| {
                (
                    ms * GOAL_RATIO / 1000.0,
                    format!("goal: N = 1 + {:.0} %", (GOAL_RATIO - 1.0) * 100.0),
                )
            }),
        },
        Panel {
            title: "CPU",
            unit: "% of one core",
            series: vec![
                Series {
                    name: "etcd (three members), clients writing",
                    color: "#ff7f0e",
                    points: window(true, Resources::etcd_cpu_percent),
                    line: true,
                },
                Series {
                    name: "all agents (one process), clients writing",
                    color: "#1f77b4",
                    points: window(true, Resources::process_cpu_percent),
                    line: true,
                },
                Series {
                    name: "etcd at rest",
                    color: "#fdae6b",
                    points: window(false, Resources::etcd_cpu_percent),
                    line: true,
                },
                Series {
                    name: "agents at rest",
                    color: "#9ecae1",
                    points: window(false, Resources::process_cpu_percent),
                    line: true,
                },
            ],
            limit: None,
        },
        Panel {
            title: "memory",
            unit: "MiB",
            series: vec![
                Series {
                    name: "etcd VmRSS (three members)",
                    color: "#ff7f0e",
                    points: window(true, |r| r.etcd_rss_max_kb as f64 / 1024.0),
                    line: true,
                },
                Series {
                    name: "agents: process VmRSS growth",
                    color: "#1f77b4",
                    points: done
                        .iter()
                        .map(|s| (n(s), s.agents_rss_kb as f64 / 1024.0))
                        .collect(),
                    line: true,
                },
            ],
            limit: None,
        },
    ];
    let width = MARGIN_LEFT + panels.len() as f64 * (PANEL_WIDTH + GAP + MARGIN_LEFT);
    let height = MARGIN_TOP + PANEL_HEIGHT + 110.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/><text x="{MARGIN_LEFT}" y="24" font-size="16" font-weight="bold">matriarch fleet: N clusters of three agents on one three-member etcd</text>"#
    );
    for (i, panel) in panels.iter().enumerate() {
        let left = MARGIN_LEFT + i as f64 * (PANEL_WIDTH + GAP + MARGIN_LEFT);
        panel.draw(&mut s, left, x_max);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::report::FailoverRun;
    use super::*;

    fn size(clusters: usize, promoted_ms: &[u64]) -> FleetFigures {
        FleetFigures {
            clusters,
            writing: Some(Resources {
                seconds: 10.0,
                etcd_cpu_seconds: 1.0,
                ..Resources::default()
            }),
            failovers: promoted_ms
                .iter()
                .map(|&promoted_ms| FailoverRun {
                    lock_expired_ms: None,
                    lock_taken_ms: None,
                    promoted_ms,
                })
                .collect(),
            ..FleetFigures::default()
        }
    }

    #[test]
    fn the_plot_has_every_run_the_medians_and_the_goal() {
        let svg = fleet_svg(&[
            size(1, &[5000, 5200]),
            size(200, &[5300, 5400, 5500]),
            FleetFigures::failed(400, "etcd".into()),
        ]);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        // Five runs, two medians; two CPU points for each of etcd and the
        // agents while writing; two memory points for each of them.
        assert_eq!(svg.matches("<circle ").count(), 5 + 2 + 2 * 2 + 2 * 2);
        assert!(svg.contains("goal: N = 1 + 10 %"));
        // The failed size is left out: the x axis ends at 200.
        assert!(svg.contains(">200</text>") && !svg.contains(">400</text>"));
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(axis(5.6), (6.0, 2.0));
        assert_eq!(axis(200.0), (200.0, 50.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }
}
