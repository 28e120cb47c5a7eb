//! The dashboard's charts: SVG drawn on the server by `plotters` (its SVG backend), inlined in
//! the page, so the page needs no script and makes no request for an image. Every chart is
//! `role="img"` with a `<title>` and `<desc>` it is labelled by, and every number it draws is
//! in the table beside it. Each estimate is drawn with its interval (a whisker or a band).
//!
//! Styling is by SVG presentation attributes (`fill`, `stroke`, `font-size` ...), which the
//! page's Content-Security-Policy allows (it forbids only `style` attributes and elements).
//! Numbers that are too small to show are not drawn.

use plotters::prelude::*;

/// One estimate with its interval, as drawn.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// The estimate.
    pub estimate: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
    /// Too small to show: not drawn.
    pub hidden: bool,
}

/// One row of an interval chart: a label and one point per series (`None`: no number).
pub struct Row {
    /// The row's label (a unit, a profession group ...).
    pub label: String,
    /// One point per series, in the order of the series' names.
    pub points: Vec<Option<Point>>,
}

/// What a chart says about itself to a screen reader.
pub struct Labels<'a> {
    /// A unique id in the page (`[a-z0-9-]`), for `aria-labelledby`.
    pub id: &'a str,
    /// The chart's title.
    pub title: &'a str,
    /// What it shows, in a sentence or two.
    pub desc: &'a str,
}

/// Series colours: the Designsystemet accent blue and three distinguishable companions
/// (the Okabe–Ito palette, safe for colour-blind readers).
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// Width of every chart in SVG units; the page scales it to the column (`viewBox`).
const WIDTH: u32 = 640;

/// A horizontal interval chart: per row, per series, a dot at the estimate and a whisker over
/// its interval. `series` names the series (quarters); with one series no legend is drawn.
pub fn intervals(labels: &Labels<'_>, series: &[String], rows: &[Row]) -> String {
    let per_row = 14 * series.len().max(1) as u32 + 10;
    let height = 60 + per_row * rows.len().max(1) as u32 + 20 * u32::from(series.len() > 1);
    let mut svg = String::new();
    let max = rows
        .iter()
        .flat_map(|r| r.points.iter().flatten())
        .filter(|p| !p.hidden)
        .map(|p| p.high)
        .fold(1.0_f64, f64::max)
        * 1.05;
    let n = rows.len().max(1) as f64;
    let label_of = |y: &f64| -> String {
        // Row i sits at y = n - i - 0.5 (top to bottom).
        let i = (n - y - 0.5).round();
        if (n - i - 0.5 - y).abs() < 1e-6 && i >= 0.0 {
            rows.get(i as usize)
                .map(|r| r.label.clone())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max, 0.0..n)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&label_of)
            .x_labels(6)
            .label_style(("sans-serif", 13).into_font().color(&BLACK))
            .axis_style(BLACK)
            .light_line_style(RGBColor(230, 230, 230))
            .draw()?;
        let k = series.len().max(1) as f64;
        // Without names there is one series, drawn without a legend.
        for s in 0..series.len().max(1) {
            let colour = COLOURS[s % COLOURS.len()];
            // Series s of row i sits within the row's band, top to bottom.
            let y = |i: usize| n - i as f64 - (s as f64 + 0.5) / (k + 0.4) - 0.2 / (k + 0.4);
            let points: Vec<(usize, Point)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.points.get(s).copied().flatten().map(|p| (i, p)))
                .filter(|(_, p)| !p.hidden)
                .collect();
            let anno = chart.draw_series(points.iter().map(|(i, p)| {
                ErrorBar::new_horizontal(
                    y(*i),
                    p.low,
                    p.estimate,
                    p.high,
                    colour.stroke_width(2),
                    8,
                )
            }))?;
            if let (true, Some(name)) = (series.len() > 1, series.get(s)) {
                anno.label(name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
            }
            chart.draw_series(
                points
                    .iter()
                    .map(|(i, p)| Circle::new((p.estimate, y(*i)), 4, colour.filled())),
            )?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 13).into_font().color(&BLACK))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    finish(svg, drawn.is_ok(), labels)
}

/// A line of estimates over time with its intervals as a band; `ticks` labels the x axis
/// (months), one per point.
pub fn band(labels: &Labels<'_>, ticks: &[String], points: &[Point]) -> String {
    let mut svg = String::new();
    let max = points
        .iter()
        .filter(|p| !p.hidden)
        .map(|p| p.high)
        .fold(1.0_f64, f64::max)
        * 1.05;
    let n = points.len().max(2) as f64 - 1.0;
    let tick_of = |x: &f64| -> String {
        let i = x.round();
        if (i - x).abs() < 1e-6 && i >= 0.0 {
            ticks.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.3..n + 0.3, 0.0..max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(points.len().clamp(2, 12))
            .x_label_formatter(&tick_of)
            .y_labels(6)
            .label_style(("sans-serif", 13).into_font().color(&BLACK))
            .axis_style(BLACK)
            .light_line_style(RGBColor(230, 230, 230))
            .draw()?;
        let shown: Vec<(f64, Point)> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.hidden)
            .map(|(i, p)| (i as f64, *p))
            .collect();
        // The band: the lower ends left to right, then the upper ends back.
        let outline: Vec<(f64, f64)> = shown
            .iter()
            .map(|(x, p)| (*x, p.low))
            .chain(shown.iter().rev().map(|(x, p)| (*x, p.high)))
            .collect();
        if shown.len() > 1 {
            chart.draw_series(std::iter::once(Polygon::new(
                outline,
                COLOURS[0].mix(0.2).filled(),
            )))?;
        }
        chart.draw_series(LineSeries::new(
            shown.iter().map(|(x, p)| (*x, p.estimate)),
            COLOURS[0].stroke_width(2),
        ))?;
        chart.draw_series(shown.iter().map(|(x, p)| {
            ErrorBar::new_vertical(*x, p.low, p.estimate, p.high, COLOURS[0].stroke_width(1), 6)
        }))?;
        chart.draw_series(
            shown
                .iter()
                .map(|(x, p)| Circle::new((*x, p.estimate), 4, COLOURS[0].filled())),
        )?;
        root.present()?;
        Ok(())
    })();
    finish(svg, drawn.is_ok(), labels)
}

/// The drawn SVG made accessible and scalable: `role="img"`, labelled by its `<title>` and
/// described by its `<desc>`, width taken from the page. A chart that could not be drawn
/// (never expected: the SVG backend writes to a string) becomes an empty, titled image, as
/// the table beside it carries the numbers anyway.
fn finish(svg: String, ok: bool, l: &Labels<'_>) -> String {
    let (title, desc) = (escape(l.title), escape(l.desc));
    let head = format!(
        "<svg class=\"ts-chart\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" ",
        id = l.id
    );
    let titles = format!(
        "<title id=\"{id}-title\">{title}</title><desc id=\"{id}-desc\">{desc}</desc>",
        id = l.id
    );
    if !ok || !svg.starts_with("<svg ") {
        tracing::warn!("a dashboard chart could not be drawn");
        return format!("{head}viewBox=\"0 0 {WIDTH} 40\">{titles}</svg>");
    }
    let body = &svg["<svg ".len()..];
    // The first tag's end: the title and description go first inside it.
    let end = body.find('>').map_or(0, |e| e + 1);
    // plotters writes fixed width and height; the viewBox it also writes lets CSS scale it.
    let open =
        body[..end]
            .replacen("width=", "data-width=", 1)
            .replacen("height=", "data-height=", 1);
    format!("{head}{open}{titles}{}", &body[end..])
}

/// Text for SVG content and attributes.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(e: f64) -> Option<Point> {
        Some(Point {
            estimate: e,
            low: e - 1.0,
            high: e + 2.0,
            hidden: false,
        })
    }

    #[test]
    fn charts_are_titled_images_without_style_attributes() {
        let l = Labels {
            id: "c1",
            title: "Uptake <by unit>",
            desc: "Dots & whiskers",
        };
        let rows = vec![
            Row {
                label: "Akuttmottak".into(),
                points: vec![p(3.0), p(4.0)],
            },
            Row {
                label: "Intensiv".into(),
                points: vec![p(1.0), None],
            },
        ];
        let svg = intervals(&l, &["2026-Q1".into(), "2026-Q2".into()], &rows);
        assert!(
            svg.starts_with(
                "<svg class=\"ts-chart\" role=\"img\" aria-labelledby=\"c1-title c1-desc\""
            ),
            "{svg}"
        );
        assert!(svg.contains("<title id=\"c1-title\">Uptake &lt;by unit&gt;</title>"));
        assert!(svg.contains("<desc id=\"c1-desc\">Dots &amp; whiskers</desc>"));
        assert!(svg.contains("Akuttmottak") && svg.contains("2026-Q2"));
        assert!(svg.contains("viewBox"));
        assert!(!svg.contains("style="), "{svg}");
        let t = band(
            &Labels {
                id: "c2",
                title: "Trend",
                desc: "Band",
            },
            &["2026-01".into(), "2026-02".into()],
            &[p(3.0).unwrap(), p(5.0).unwrap()],
        );
        assert!(t.contains("<polygon") && t.contains("2026-02"), "{t}");
        // One series without a name: drawn, without a legend.
        let one = intervals(&l, &[], &rows);
        assert_eq!(
            one.matches("fill=\"#0072B2\" stroke=\"none\"").count(),
            2,
            "{one}"
        );
        assert!(!one.contains("2026-Q1"));
        assert!(!t.contains("style="));
    }
}
