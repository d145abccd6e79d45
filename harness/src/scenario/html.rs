//! The scenario report as one HTML page. Styles, charts (inline SVG drawn
//! here) and tables all live inside the page, with no scripts, fonts or
//! links to fetch: it is archived next to the JSON report as a CI artefact
//! or mailed around, and has to open the same way offline, years later, in
//! any browser.

use std::fmt::{self, Write as _};

use super::report::{EngineRun, Lag, ScenarioReport, TimelinePoint};

/// Renders `report` as one self-contained HTML page: a header with the
/// scenario, its setup and the verdict (OK or mail lost or duplicated), the
/// key figures, three inline SVG charts (messages per second over time with
/// the engine runs and the MX flip behind them, lag percentiles, seconds per
/// phase) and a table of every engine run. Parts the report lacks are left
/// out; every text taken from the report is HTML-escaped.
pub fn render(report: &ScenarioReport) -> String {
    Page(report).to_string()
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222;background:#fff}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.5rem}
h1{margin:0;font-size:1.6rem}
h2{font-size:1.2rem;margin:2rem 0 .5rem}
.meta{flex-basis:100%;margin:0;color:#555}
.status{font-size:2rem;font-weight:700;padding:.2rem 1rem;border-radius:.4rem;color:#fff}
.status.ok{background:#2e7d32}
.status.bad{background:#c62828}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .75rem;border-bottom:1px solid #ddd;text-align:left}
.runs td{text-align:right}
.runs td:nth-child(2){text-align:left}
td.bad,tr.bad td{color:#c62828;font-weight:600}
figure{margin:2rem 0}
figcaption{font-weight:600;margin-bottom:.5rem}
svg{width:100%;height:auto;font-size:12px}
.grid{stroke:#e6e6e6}
.axis{stroke:#444}
.tick{fill:#555}
.label{fill:#333}
.run{fill-opacity:.3}
.delivered{stroke-dasharray:5 3}
.flip{stroke:#d62728;stroke-width:2;stroke-dasharray:6 3}
.flip-label{fill:#d62728}
.note{fill:#888;font-style:italic}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1.25rem;font-size:.9rem;color:#333}
.swatch{display:inline-block;width:.9rem;height:.9rem;margin-right:.35rem;vertical-align:-.1rem;border-radius:2px}
.swatch.faint{opacity:.4}
";

/// The copied series, and the business-day lag.
const BLUE: &str = "#1f4e9c";
/// The delivered series, and the late-mail lag.
const ORANGE: &str = "#f28e2b";
/// The MX flip.
const RED: &str = "#d62728";

/// A colour per engine phase, for the run spans, the bars and the table.
fn phase_colour(phase: &str) -> &'static str {
    match phase {
        "initial" => "#76b7b2",
        "delta" => "#59a14f",
        "final" => "#edc948",
        "sweep" => "#b07aa1",
        _ => "#9c9c9c",
    }
}

struct Page<'a>(&'a ScenarioReport);

impl fmt::Display for Page<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(
            f,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>cutover scenario {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
            Esc(&r.name)
        )?;
        header(f, r)?;
        key_figures(f, r)?;
        throughput_chart(f, r)?;
        lag_chart(f, r)?;
        phase_chart(f, r)?;
        runs_table(f, &r.runs)?;
        f.write_str("</body>\n</html>\n")
    }
}

fn header(f: &mut fmt::Formatter<'_>, r: &ScenarioReport) -> fmt::Result {
    let (class, verdict) = if r.ok() {
        ("ok", "OK")
    } else {
        ("bad", "MAIL LOST OR DUPLICATED")
    };
    write!(
        f,
        "<header>\n<h1>Scenario {}</h1>\n<div class=\"status {class}\">{verdict}</div>\n\
         <p class=\"meta\">{} backend · started {} · {} mailboxes, {} at a time · \
         {} messages, {} MB (largest {} MB) · {} s in all</p>\n</header>\n",
        Esc(&r.name),
        Esc(r.backend.as_str()),
        Esc(&r.started_at),
        r.mailboxes,
        r.concurrency,
        r.corpus.messages,
        Num(mb(r.corpus.bytes), 1),
        Num(mb(r.corpus.largest_message), 2),
        Num(r.total_seconds, 1),
    )
}

fn key_figures(f: &mut fmt::Formatter<'_>, r: &ScenarioReport) -> fmt::Result {
    f.write_str("<section>\n<h2>Key figures</h2>\n<table class=\"figures\">\n")?;
    let copy = |t: &crate::bench::Throughput| {
        format!(
            "{} s · {} MB/s ({} messages)",
            Num(t.seconds, 2),
            Num(t.mb_per_s, 1),
            t.messages
        )
    };
    if let Some(floor) = &r.floor {
        row(f, "Floor (raw FETCH + MULTIAPPEND)", copy(floor), false)?;
    }
    row(f, "Engine initial copy", copy(&r.initial), false)?;
    if let Some(ratio) = r.ratio_to_floor {
        row(f, "Ratio to floor", format_args!("{}×", Num(ratio, 2)), false)?;
    }
    if let Some(day) = &r.business_day {
        row(
            f,
            "Business day",
            format_args!(
                "{} delivered in {} s ({}/s)",
                day.delivered,
                Num(day.seconds, 1),
                Num(day.arrivals_per_second, 1)
            ),
            false,
        )?;
        lag_row(f, "Business-day lag", day.lag.as_ref())?;
    }
    if let Some(c) = &r.cutover {
        row(
            f,
            "Cutover window",
            format_args!("{} s", Num(c.window_seconds, 2)),
            false,
        )?;
        row(
            f,
            "Final sync (then all mail from before the flip is on the target)",
            format_args!("{} s", Num(c.final_seconds, 2)),
            false,
        )?;
        row(f, "Sweeps", c.sweeps, false)?;
        row(
            f,
            "Late mail after the flip",
            format_args!(
                "{} delivered in {} s ({}/s)",
                c.late_mail.delivered,
                Num(c.late_mail.seconds, 1),
                Num(c.late_mail.arrivals_per_second, 1)
            ),
            false,
        )?;
        lag_row(f, "Late-mail lag", c.late_mail.lag.as_ref())?;
    }
    let e = &r.engine;
    row(
        f,
        "Engine CPU",
        format_args!(
            "{} s over {} s of runs ({} cores)",
            Num(e.cpu_seconds, 1),
            Num(e.wall_seconds, 1),
            Num(e.cpu_per_wall, 2)
        ),
        false,
    )?;
    row(
        f,
        "Engine peak RSS",
        format_args!("{} MiB", Num(mib(e.peak_rss_bytes), 1)),
        false,
    )?;
    if let Some(x) = &r.faults {
        row(
            f,
            "Fault proxies",
            format_args!(
                "{} commands, {} throttled, {} connections reset, {} stalls",
                x.commands, x.throttled, x.resets, x.stalls
            ),
            false,
        )?;
    }
    let v = &r.verify;
    row(
        f,
        "Verify",
        format_args!(
            "{} missing, {} duplicated, {} date/size/content differences, {} flag differences",
            v.missing, v.extra, v.differences, v.flag_mismatches
        ),
        v.missing + v.extra + v.differences > 0,
    )?;
    row(
        f,
        "Arrivals never copied",
        r.arrivals_not_copied,
        r.arrivals_not_copied > 0,
    )?;
    f.write_str("</table>\n</section>\n")
}

fn lag_row(f: &mut fmt::Formatter<'_>, label: &str, lag: Option<&Lag>) -> fmt::Result {
    match lag {
        Some(l) => row(
            f,
            label,
            format_args!(
                "p50 {} ms · p90 {} ms · p99 {} ms · max {} ms (mean {} ms over {} messages)",
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                Num(l.mean_ms, 1),
                l.count
            ),
            false,
        ),
        None => Ok(()),
    }
}

fn row(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display, bad: bool) -> fmt::Result {
    let class = if bad { " class=\"bad\"" } else { "" };
    writeln!(f, "<tr><th>{}</th><td{class}>{}</td></tr>", Esc(label), Esc(value))
}

fn throughput_chart(f: &mut fmt::Formatter<'_>, r: &ScenarioReport) -> fmt::Result {
    let copied = per_second(&r.timeline, |p| p.copied);
    let delivered = per_second(&r.timeline, |p| p.delivered);
    let flip = r.cutover.as_ref().map(|c| c.flip_s);
    let x_max = r
        .runs
        .iter()
        .map(|run| run.started_s + run.seconds)
        .chain(copied.last().map(|p| p.0))
        .chain(flip)
        .fold(0.0, f64::max);
    let y_max = copied.iter().chain(&delivered).map(|p| p.1).fold(0.0, f64::max);
    let plot = Plot::new(x_max, true, y_max);
    plot.begin(
        f,
        "throughput",
        "Messages per second, with the engine runs behind them",
        "seconds since the start of the initial copy",
        "messages per second",
    )?;
    for (i, run) in r.runs.iter().enumerate() {
        let x = plot.x(run.started_s);
        let width = (plot.x(run.started_s + run.seconds) - x).max(1.0);
        writeln!(
            f,
            "<rect class=\"run\" x=\"{x:.1}\" y=\"{TOP}\" width=\"{width:.1}\" height=\"{}\" fill=\"{}\">\
             <title>{}</title></rect>",
            H - TOP - BOTTOM,
            phase_colour(&run.phase),
            Esc(format_args!(
                "run {} ({}): {} s from {} s, {} copied",
                i + 1,
                run.phase,
                Num(run.seconds, 2),
                Num(run.started_s, 1),
                run.copied
            ))
        )?;
    }
    if copied.is_empty() {
        plot.note(f, "no timeline recorded")?;
    }
    plot.line(f, "delivered", ORANGE, &delivered)?;
    plot.line(f, "copied", BLUE, &copied)?;
    if let Some(flip) = flip {
        let x = plot.x(flip);
        writeln!(
            f,
            "<line class=\"flip\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\"/>\
             <text class=\"flip-label\" x=\"{:.1}\" y=\"{}\">MX flip</text>",
            H - BOTTOM,
            x + 4.0,
            TOP + 12.0
        )?;
    }
    let mut legend = vec![
        Key::new(BLUE, "copied to the target"),
        Key::new(ORANGE, "delivered to the source"),
    ];
    let mut phases: Vec<&str> = Vec::new();
    for run in &r.runs {
        if !phases.contains(&run.phase.as_str()) {
            phases.push(&run.phase);
        }
    }
    legend.extend(phases.into_iter().map(|phase| Key {
        faint: true,
        ..Key::new(phase_colour(phase), format!("{phase} run"))
    }));
    if flip.is_some() {
        legend.push(Key::new(RED, "MX flip"));
    }
    plot.end(f, &legend)
}

/// One series of the timeline as a step line: each second's value held
/// from its start to its end, dropping to zero over seconds not recorded.
fn per_second(timeline: &[TimelinePoint], value: fn(&TimelinePoint) -> u64) -> Vec<(f64, f64)> {
    let mut sorted: Vec<&TimelinePoint> = timeline.iter().collect();
    sorted.sort_by_key(|p| p.second);
    let mut points = Vec::with_capacity(sorted.len() * 2);
    let mut end: Option<u64> = None;
    for p in sorted {
        let start = p.second as f64;
        if let Some(end) = end.filter(|&end| p.second > end) {
            points.push((end as f64, 0.0));
            points.push((start, 0.0));
        }
        let v = value(p) as f64;
        points.push((start, v));
        points.push((start + 1.0, v));
        end = Some(p.second + 1);
    }
    points
}

fn lag_chart(f: &mut fmt::Formatter<'_>, r: &ScenarioReport) -> fmt::Result {
    let business_day = r.business_day.as_ref().and_then(|d| d.lag.as_ref());
    let late_mail = r.cutover.as_ref().and_then(|c| c.late_mail.lag.as_ref());
    let series: Vec<(&str, &'static str, &Lag)> = [
        ("business day", BLUE, business_day),
        ("late mail after the flip", ORANGE, late_mail),
    ]
    .into_iter()
    .filter_map(|(label, colour, lag)| Some((label, colour, lag.filter(|l| !l.percentiles.is_empty())?)))
    .collect();
    let y_max = series
        .iter()
        .flat_map(|s| &s.2.percentiles)
        .map(|&(_, ms)| ms as f64)
        .fold(0.0, f64::max);
    let plot = Plot::new(100.0, true, y_max);
    plot.begin(
        f,
        "lag",
        "Lag from delivery on the source to presence on the target",
        "percentile",
        "milliseconds",
    )?;
    if series.is_empty() {
        plot.note(f, "no lag measured")?;
    }
    let mut legend = Vec::new();
    for (label, colour, lag) in series {
        let points: Vec<(f64, f64)> = lag.percentiles.iter().map(|&(p, ms)| (p, ms as f64)).collect();
        plot.line(f, "lag", colour, &points)?;
        legend.push(Key::new(
            colour,
            format!(
                "{label}: {} messages, p50 {} ms, p99 {} ms, max {} ms",
                lag.count, lag.p50_ms, lag.p99_ms, lag.max_ms
            ),
        ));
    }
    plot.end(f, &legend)
}

fn phase_chart(f: &mut fmt::Formatter<'_>, r: &ScenarioReport) -> fmt::Result {
    let y_max = r.phases.iter().map(|p| p.seconds).fold(0.0, f64::max);
    let plot = Plot::new(r.phases.len() as f64, false, y_max);
    plot.begin(f, "phases", "Engine seconds per phase", "phase", "seconds")?;
    if r.phases.is_empty() {
        plot.note(f, "no engine runs")?;
    }
    for (i, phase) in r.phases.iter().enumerate() {
        let (left, right) = (plot.x(i as f64 + 0.2), plot.x(i as f64 + 0.8));
        let (top, base) = (plot.y(phase.seconds), plot.y(0.0));
        let middle = (left + right) / 2.0;
        let runs = if phase.runs == 1 { "run" } else { "runs" };
        writeln!(
            f,
            "<rect class=\"bar\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
             <title>{}</title></rect>\n\
             <text class=\"label\" x=\"{middle:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} s</text>\n\
             <text class=\"tick\" x=\"{middle:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} ({} {runs})</text>",
            right - left,
            base - top,
            phase_colour(&phase.phase),
            Esc(format_args!(
                "{}: {} {runs}, {} s (longest {} s), {} copied, CPU {} s",
                phase.phase,
                phase.runs,
                Num(phase.seconds, 2),
                Num(phase.longest_seconds, 2),
                phase.copied,
                Num(phase.cpu_seconds, 2)
            )),
            top - 5.0,
            Num(phase.seconds, 1),
            base + 16.0,
            Esc(&phase.phase),
            phase.runs,
        )?;
    }
    plot.end(f, &[])
}

fn runs_table(f: &mut fmt::Formatter<'_>, runs: &[EngineRun]) -> fmt::Result {
    f.write_str("<section>\n<h2>Engine runs</h2>\n")?;
    if runs.is_empty() {
        return f.write_str("<p>No engine runs.</p>\n</section>\n");
    }
    f.write_str(
        "<table class=\"runs\">\n<thead><tr><th>#</th><th>phase</th><th>start s</th><th>seconds</th>\
         <th>copied</th><th>MB</th><th>failed mailboxes</th><th>CPU s</th><th>peak RSS MiB</th></tr></thead>\n<tbody>\n",
    )?;
    for (i, run) in runs.iter().enumerate() {
        writeln!(
            f,
            "<tr{}><td>{}</td><td><i class=\"swatch\" style=\"background:{}\"></i>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if run.failed_mailboxes > 0 { " class=\"bad\"" } else { "" },
            i + 1,
            phase_colour(&run.phase),
            Esc(&run.phase),
            Num(run.started_s, 1),
            Num(run.seconds, 2),
            run.copied,
            Num(mb(run.bytes), 2),
            run.failed_mailboxes,
            Num(run.cpu_seconds, 2),
            Num(mib(run.peak_rss_bytes), 1),
        )?;
    }
    f.write_str("</tbody>\n</table>\n</section>\n")
}

// The SVG canvas (user units) and the margins around its plot area.
const W: f64 = 800.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// A chart's frame, shared by all three: linear scales from zero to a
/// rounded-up maximum mapped onto the plot area, with grid, ticks, axes,
/// labels and a legend.
struct Plot {
    x_max: f64,
    /// Tick spacing on x; `None` for categories placed by the chart.
    x_step: Option<f64>,
    y_max: f64,
    y_step: f64,
}

impl Plot {
    fn new(x_max: f64, x_ticks: bool, y_max: f64) -> Self {
        let (x_max, x_step) = if x_ticks {
            let (max, step) = nice(x_max);
            (max, Some(step))
        } else {
            (positive(x_max), None)
        };
        let (y_max, y_step) = nice(y_max);
        Plot {
            x_max,
            x_step,
            y_max,
            y_step,
        }
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + finite(v).clamp(0.0, self.x_max) / self.x_max * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - finite(v).clamp(0.0, self.y_max) / self.y_max * (H - TOP - BOTTOM)
    }

    fn begin(&self, f: &mut fmt::Formatter<'_>, id: &str, title: &str, x_label: &str, y_label: &str) -> fmt::Result {
        writeln!(
            f,
            "<figure id=\"{}\">\n<figcaption>{}</figcaption>\n<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
            Esc(id),
            Esc(title),
            Esc(title)
        )?;
        for v in ticks(self.y_max, self.y_step) {
            let y = self.y(v);
            writeln!(
                f,
                "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                Num(v, decimals(self.y_step))
            )?;
        }
        if let Some(step) = self.x_step {
            for v in ticks(self.x_max, step) {
                let x = self.x(v);
                writeln!(
                    f,
                    "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\"/>\
                     <text class=\"tick\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    H - BOTTOM,
                    H - BOTTOM + 16.0,
                    Num(v, decimals(step))
                )?;
            }
        }
        writeln!(
            f,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"/>\
             <line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\"/>\n\
             <text class=\"label\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
             <text class=\"label\" transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 8.0,
            Esc(x_label),
            TOP + (H - TOP - BOTTOM) / 2.0,
            Esc(y_label),
            base = H - BOTTOM,
            right = W - RIGHT,
        )
    }

    /// A polyline through `points` in data coordinates.
    fn line(&self, f: &mut fmt::Formatter<'_>, class: &str, colour: &str, points: &[(f64, f64)]) -> fmt::Result {
        if points.is_empty() {
            return Ok(());
        }
        write!(
            f,
            "<polyline class=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"",
            Esc(class),
            Esc(colour)
        )?;
        for (i, &(x, y)) in points.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{:.1},{:.1}", self.x(x), self.y(y))?;
        }
        f.write_str("\"/>\n")
    }

    /// A message in the middle of an empty plot.
    fn note(&self, f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
        writeln!(
            f,
            "<text class=\"note\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            TOP + (H - TOP - BOTTOM) / 2.0,
            Esc(text)
        )
    }

    fn end(&self, f: &mut fmt::Formatter<'_>, legend: &[Key]) -> fmt::Result {
        f.write_str("</svg>\n")?;
        if !legend.is_empty() {
            f.write_str("<div class=\"legend\">")?;
            for key in legend {
                write!(
                    f,
                    "<span><i class=\"swatch{}\" style=\"background:{}\"></i>{}</span>",
                    if key.faint { " faint" } else { "" },
                    Esc(key.colour),
                    Esc(&key.label)
                )?;
            }
            f.write_str("</div>\n")?;
        }
        f.write_str("</figure>\n")
    }
}

/// One legend entry.
struct Key {
    colour: &'static str,
    /// Drawn translucent, like the run spans.
    faint: bool,
    label: String,
}

impl Key {
    fn new(colour: &'static str, label: impl Into<String>) -> Self {
        Key {
            colour,
            faint: false,
            label: label.into(),
        }
    }
}

/// A maximum rounded up to a multiple of a 1-2-5 step giving at most
/// about six ticks, and that step. Empty or broken data gives 0..1.
fn nice(max: f64) -> (f64, f64) {
    let max = positive(max);
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let rounded = (max / step).ceil() * step;
    if rounded.is_finite() && rounded > 0.0 && step.is_finite() && step > 0.0 {
        (rounded, step)
    } else {
        (1.0, 0.2)
    }
}

fn ticks(max: f64, step: f64) -> impl Iterator<Item = f64> {
    let count = (max / step).round() as usize;
    (0..=count).map(move |i| i as f64 * step)
}

/// Enough decimals to tell ticks `step` apart.
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).clamp(0.0, 3.0) as usize
}

fn positive(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        1.0
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// A number with fixed decimals, or a dash when it is not finite.
struct Num(f64, usize);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_finite() {
            write!(f, "{:.*}", self.1, self.0)
        } else {
            f.write_str("–")
        }
    }
}

/// Anything displayable, HTML-escaped (for text and attribute values).
struct Esc<T>(T);

impl<T: fmt::Display> fmt::Display for Esc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaper(f), "{}", self.0)
    }
}

struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.write_str("&amp;")?,
                '<' => self.0.write_str("&lt;")?,
                '>' => self.0.write_str("&gt;")?,
                '"' => self.0.write_str("&quot;")?,
                '\'' => self.0.write_str("&#39;")?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::bench::{CorpusStats, Throughput, VerifyTotals};
    use crate::scenario::report::{ArrivalPeriod, CutoverWindow, EngineUsage, FaultCounts, PhaseTotal};

    fn run(phase: &str, started_s: f64, seconds: f64, copied: u64) -> EngineRun {
        EngineRun {
            phase: phase.into(),
            started_s,
            seconds,
            copied,
            bytes: copied * 10_000,
            failed_mailboxes: 0,
            cpu_seconds: seconds / 2.0,
            peak_rss_bytes: 40 << 20,
            throttling: Vec::new(),
        }
    }

    fn lag(max_ms: u64) -> Lag {
        Lag {
            count: 100,
            p50_ms: max_ms / 4,
            p90_ms: max_ms / 2,
            p99_ms: max_ms - 1,
            max_ms,
            mean_ms: max_ms as f64 / 3.0,
            percentiles: vec![(0.0, 1), (50.0, max_ms / 4), (90.0, max_ms / 2), (100.0, max_ms)],
        }
    }

    fn empty(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            backend: BackendKind::Native,
            started_at: "2024-05-01T12:00:00Z".into(),
            mailboxes: 0,
            concurrency: 1,
            corpus: CorpusStats::default(),
            floor: None,
            initial: Throughput {
                messages: 0,
                bytes: 0,
                seconds: 0.0,
                mb_per_s: 0.0,
            },
            ratio_to_floor: None,
            runs: Vec::new(),
            phases: Vec::new(),
            business_day: None,
            cutover: None,
            timeline: Vec::new(),
            engine: EngineUsage {
                cpu_seconds: 0.0,
                wall_seconds: 0.0,
                cpu_per_wall: 0.0,
                peak_rss_bytes: 0,
            },
            faults: None,
            verify: VerifyTotals::default(),
            arrivals_not_copied: 0,
            injected: std::collections::BTreeMap::new(),
            total_seconds: 0.0,
        }
    }

    fn sample() -> ScenarioReport {
        let runs = vec![
            run("initial", 0.0, 4.0, 400),
            run("delta", 6.0, 1.0, 20),
            run("final", 9.0, 1.5, 10),
            run("sweep", 11.0, 0.5, 3),
        ];
        let timeline = (0..12)
            .map(|second| TimelinePoint {
                second,
                copied: if second < 4 { 100 } else { 3 },
                bytes: 1000,
                delivered: u64::from(second >= 4) * 2,
            })
            .collect();
        ScenarioReport {
            mailboxes: 4,
            concurrency: 2,
            corpus: CorpusStats {
                messages: 400,
                bytes: 4_000_000,
                largest_message: 250_000,
            },
            floor: Some(Throughput {
                messages: 400,
                bytes: 4_000_000,
                seconds: 2.0,
                mb_per_s: 2.0,
            }),
            initial: Throughput {
                messages: 400,
                bytes: 4_000_000,
                seconds: 4.0,
                mb_per_s: 1.0,
            },
            // Broken input must not leak into the page as "NaN".
            ratio_to_floor: Some(f64::NAN),
            phases: ["initial", "delta", "final", "sweep"]
                .iter()
                .map(|phase| PhaseTotal {
                    phase: (*phase).into(),
                    runs: 1,
                    seconds: runs.iter().filter(|r| r.phase == *phase).map(|r| r.seconds).sum(),
                    longest_seconds: 1.0,
                    copied: 1,
                    cpu_seconds: 0.5,
                })
                .collect(),
            runs,
            business_day: Some(ArrivalPeriod {
                seconds: 5.0,
                delivered: 10,
                arrivals_per_second: 2.0,
                lag: Some(lag(800)),
            }),
            cutover: Some(CutoverWindow {
                flip_s: 9.0,
                final_seconds: 1.5,
                window_seconds: 2.75,
                sweeps: 1,
                late_mail: ArrivalPeriod {
                    seconds: 2.0,
                    delivered: 4,
                    arrivals_per_second: 2.0,
                    lag: Some(lag(1500)),
                },
            }),
            timeline,
            engine: EngineUsage {
                cpu_seconds: 3.5,
                wall_seconds: 7.0,
                cpu_per_wall: 0.5,
                peak_rss_bytes: 40 << 20,
            },
            faults: Some(FaultCounts {
                commands: 900,
                throttled: 7,
                resets: 2,
                stalls: 1,
            }),
            total_seconds: 20.0,
            ..empty("a<b&\"c\"")
        }
    }

    /// The `points` attribute of the polyline with this class.
    fn polyline_points<'a>(html: &'a str, class: &str) -> Vec<&'a str> {
        let start = html
            .find(&format!("<polyline class=\"{class}\""))
            .unwrap_or_else(|| panic!("no {class} polyline"));
        let rest = &html[start..];
        let points = &rest[rest.find("points=\"").unwrap() + 8..];
        points[..points.find('"').unwrap()].split(' ').collect()
    }

    fn assert_one_offline_document(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..40.min(html.len())]);
        assert!(html.trim_end().ends_with("</html>"));
        for tag in ["<html", "</html>", "<head>", "<body>", "</body>"] {
            assert_eq!(html.matches(tag).count(), 1, "{tag}");
        }
        for external in ["http://", "https://", "src=", "<script", "<link", "@import", "url("] {
            assert!(!html.contains(external), "page refers to {external}");
        }
        assert!(
            !html.contains("NaN") && !html.contains("inf"),
            "a number did not survive"
        );
        // Three charts, each its own figure and SVG.
        assert_eq!(html.matches("<svg ").count(), 3);
        assert_eq!(html.matches("</svg>").count(), 3);
        for id in ["throughput", "lag", "phases"] {
            let figure = &html[html.find(&format!("<figure id=\"{id}\">")).unwrap()..];
            let figure = &figure[..figure.find("</figure>").unwrap()];
            assert_eq!(figure.matches("<svg ").count(), 1, "{id}");
        }
    }

    #[test]
    fn a_full_report_is_one_offline_page_with_three_charts() {
        let report = sample();
        let html = render(&report);
        assert_one_offline_document(&html);
        assert!(html.contains("<div class=\"status ok\">OK</div>"));
        // Every run drawn behind the timeline, the flip marked.
        assert_eq!(html.matches("<rect class=\"run\"").count(), 4);
        assert_eq!(html.matches("<line class=\"flip\"").count(), 1);
        // A step line: two points per second, twelve seconds.
        assert_eq!(polyline_points(&html, "copied").len(), 24);
        assert_eq!(polyline_points(&html, "delivered").len(), 24);
        // The 100/s of the first seconds is the top of the scale.
        assert_eq!(polyline_points(&html, "copied")[0], format!("{LEFT:.1},{TOP:.1}"));
        // Two lag curves of four percentiles each, and a bar per phase.
        assert_eq!(html.matches("<polyline class=\"lag\"").count(), 2);
        assert_eq!(html.matches("<rect class=\"bar\"").count(), 4);
        for figure in [
            "Cutover window",
            "2.75 s",
            "p50 200 ms · p90 400 ms · p99 799 ms · max 800 ms",
            "p99 1499 ms",
            "Floor (raw FETCH + MULTIAPPEND)",
            "900 commands, 7 throttled, 2 connections reset, 1 stalls",
            "40.0 MiB",
            "0 missing, 0 duplicated, 0 date/size/content differences, 0 flag differences",
        ] {
            assert!(html.contains(figure), "missing {figure}");
        }
        // One row per run in the runs table.
        let table = &html[html.find("<table class=\"runs\">").unwrap()..];
        assert_eq!(table.matches("<tr>").count(), 4 + 1);
    }

    #[test]
    fn report_texts_are_escaped() {
        let mut report = sample();
        report.runs[1].phase = "<script>".into();
        report.started_at = "'now'".into();
        let html = render(&report);
        assert!(!html.contains("a<b&\"c\""));
        assert!(!html.contains("<script>"));
        assert!(html.contains("<title>cutover scenario a&lt;b&amp;&quot;c&quot;</title>"));
        assert!(html.contains("<h1>Scenario a&lt;b&amp;&quot;c&quot;</h1>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("&#39;now&#39;"));
    }

    #[test]
    fn an_empty_report_renders_without_missing_parts() {
        let html = render(&empty("nothing"));
        assert_one_offline_document(&html);
        for note in [
            "no timeline recorded",
            "no lag measured",
            "no engine runs",
            "No engine runs.",
        ] {
            assert!(html.contains(note), "missing {note}");
        }
        for absent in [
            "Floor",
            "Ratio to floor",
            "Cutover window",
            "Business day",
            "Fault proxies",
            "<polyline",
        ] {
            assert!(!html.contains(absent), "shows {absent}");
        }
    }

    #[test]
    fn lost_mail_is_the_headline() {
        let mut report = sample();
        report.verify.missing = 2;
        let html = render(&report);
        assert!(html.contains("<div class=\"status bad\">MAIL LOST OR DUPLICATED</div>"));
        assert!(html.contains("<td class=\"bad\">2 missing"));
        report.verify.missing = 0;
        report.arrivals_not_copied = 1;
        assert!(render(&report).contains("MAIL LOST OR DUPLICATED"));
    }

    #[test]
    fn scales_round_up_and_survive_empty_data() {
        assert_eq!(nice(87.0), (100.0, 20.0));
        assert_eq!(nice(100.0), (100.0, 20.0));
        let (max, step) = nice(0.3);
        assert!((max - 0.3).abs() < 1e-9 && (step - 0.1).abs() < 1e-9, "{max} {step}");
        for broken in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert_eq!(nice(broken), (1.0, 0.2), "{broken}");
        }
        let plot = Plot::new(0.0, true, f64::NAN);
        for v in [0.0, 1.0, 1e9, f64::NAN, -3.0] {
            assert!(plot.x(v).is_finite() && plot.y(v).is_finite(), "{v}");
        }
        assert_eq!((plot.y(0.0), plot.y(1.0)), (H - BOTTOM, TOP));
        assert_eq!((plot.x(0.0), plot.x(1.0)), (LEFT, W - RIGHT));
        assert_eq!(
            ticks(100.0, 20.0).collect::<Vec<_>>(),
            [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
    }

    #[test]
    fn gaps_in_the_timeline_drop_to_zero() {
        let point = |second, copied| TimelinePoint {
            second,
            copied,
            bytes: 0,
            delivered: 0,
        };
        let series = per_second(&[point(5, 7), point(2, 3)], |p| p.copied);
        assert_eq!(
            series,
            [(2.0, 3.0), (3.0, 3.0), (3.0, 0.0), (5.0, 0.0), (5.0, 7.0), (6.0, 7.0)]
        );
    }
}
