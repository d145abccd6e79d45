//! `cutover report`: the daily report of a migration plan, as text, JSON or
//! one self-contained HTML page to mail (see the engine's
//! `calendar::report` for what it holds).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration, FixedOffset, Utc};
use clap::Args;
use cutover_engine::batch::input::parse_moment;
use cutover_engine::batch::run::register;
use cutover_engine::calendar::plan::rhythm_of;
use cutover_engine::calendar::report::{daily_report, DailyReport, DueLine, WaveReport};
use cutover_engine::calendar::status::{plan_status, MailboxStatus};
use cutover_engine::calendar::StepKind;
use cutover_engine::state::{State, StoreLocation};

use crate::batch::{self, Defaults};

#[derive(Args)]
pub struct ReportArgs {
    /// The batch file.
    file: PathBuf,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// The window of "moved" and "failed", back from now: 90m, 24h, 7d.
    #[arg(long, value_parser = crate::project::duration, default_value = "24h")]
    since: Duration,
    /// Report as if it were this moment (e.g. 2026-12-05T08:00+01:00).
    #[arg(long, env = "CUTOVER_NOW", value_parser = moment)]
    now: Option<DateTime<FixedOffset>>,
    #[command(flatten)]
    defaults: Defaults,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the report as one self-contained HTML page (to mail).
    #[arg(long, value_name = "OUT.html")]
    html: Option<PathBuf>,
}

fn moment(text: &str) -> std::result::Result<DateTime<FixedOffset>, String> {
    parse_moment(text).ok_or_else(|| format!("{text:?} is not a moment like 2026-12-05T08:00+01:00"))
}

pub fn report(args: ReportArgs) -> Result<ExitCode> {
    let file = batch::read(&args.file)?;
    if let Some(path) = args.state.file().filter(|path| !path.exists()) {
        bail!("{}: no such state file (the one `cutover plan` used)", path.display());
    }
    let mut state = State::open(&args.state)?;
    let now = args.now.map_or_else(Utc::now, |n| n.to_utc());
    let registered = register(&mut state, &file, &batch::defaults(&args.defaults)?)?;
    let plan = state
        .plan(registered.id)?
        .ok_or_else(|| anyhow!("{} has no plan yet: run `cutover plan` first", file.path.display()))?;
    let waves = state.waves(plan.id)?;
    let steps = state.plan_steps(plan.id)?;
    let addresses: HashMap<String, String> = file
        .rows
        .iter()
        .map(|r| (r.fingerprint(), r.source.address.clone()))
        .collect();
    let mut views = plan_status(
        &waves,
        &steps,
        &|row| addresses.contains_key(row),
        now,
        &rhythm_of(&plan),
    );
    let back = cutover_engine::calendar::run::migrated_back(&state, &file.rows, &batch::defaults(&args.defaults)?)?;
    cutover_engine::calendar::status::mark_migrated_back(&mut views, &back);
    let address = |row: &str| addresses.get(row).cloned().unwrap_or_else(|| row.to_string());
    let report = daily_report(
        &file.path.display().to_string(),
        &waves,
        &steps,
        &views,
        &address,
        now,
        args.since,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report, args.since));
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&report, args.since))
            .with_context(|| format!("cannot write the HTML report to {}", path.display()))?;
        eprintln!("HTML report written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `resync 2`, `sweep 3`, `final`.
fn step_label(kind: StepKind, ordinal: u32) -> String {
    match kind {
        StepKind::Resync | StepKind::Sweep => format!("{kind} {ordinal}"),
        _ => kind.to_string(),
    }
}

/// `980 B`, `12.4 kB`, `3.1 MB`, `2.40 GB` (decimal units).
fn bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1e3 {
        format!("{n} B")
    } else if n < 1e6 {
        format!("{:.1} kB", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.2} GB", n / 1e9)
    }
}

/// `90m` → `1h 30m`; `24h`, `30h`; `7d`, `2d 6h`.
fn span(d: Duration) -> String {
    let minutes = d.num_minutes().abs();
    let (hours, mins) = (minutes / 60, minutes % 60);
    match (hours, mins) {
        (0, m) => format!("{m}m"),
        (h, 0) if h < 48 => format!("{h}h"),
        (h, m) if h < 48 => format!("{h}h {m}m"),
        (h, _) if h % 24 == 0 => format!("{}d", h / 24),
        (h, _) => format!("{}d {}h", h / 24, h % 24),
    }
}

/// `in 9h`, `40m ago`, `now`.
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = at - now;
    if d.num_minutes() == 0 {
        "now".into()
    } else if d > Duration::zero() {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(d))
    }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// One line, at most 240 characters, of an error detail.
fn one_line(detail: &str) -> String {
    let joined = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 240 {
        let cut: String = joined.chars().take(239).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn statuses(wave: &WaveReport) -> String {
    if wave.statuses.is_empty() {
        return "no mailboxes".into();
    }
    wave.statuses
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn due_when(line: &DueLine, report: &DailyReport) -> String {
    match line.late_since {
        Some(since) => format!("due now (since {})", when(since)),
        None => format!("{} ({})", when(line.due), relative(line.due, report.now)),
    }
}

fn due_count(line: &DueLine) -> String {
    let mut out = plural(line.mailboxes, "mailbox", "mailboxes");
    if line.retries > 0 {
        let _ = write!(out, ", {} again after failing", line.retries);
    }
    out
}

fn held_hint(report: &DailyReport, wave: &WaveReport) -> String {
    format!(
        "nothing of this wave runs until `cutover release {} --state … --wave {}`",
        report.file, wave.wave
    )
}

/// The report as plain text (what `cutover report` prints).
fn text(report: &DailyReport, since: Duration) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(out, "Daily report — {} — {}", report.file, when(report.now));
    let _ = writeln!(
        out,
        "moved and failed in the last {} (since {}); due next until {}",
        span(since),
        when(report.since),
        when(report.due_until)
    );
    let _ = writeln!(
        out,
        "{} in {}: {} moved ({} messages, {}), {} failing, {} overdue{}",
        plural(t.mailboxes, "mailbox", "mailboxes"),
        plural(report.waves.len(), "wave", "waves"),
        t.moved_mailboxes,
        t.messages,
        bytes(t.bytes),
        t.failed_mailboxes,
        t.overdue,
        if t.held_waves > 0 {
            format!(", {} HELD", plural(t.held_waves, "wave", "waves"))
        } else {
            String::new()
        }
    );
    for wave in &report.waves {
        let _ = writeln!(
            out,
            "\nwave {} — cutover {} ({}) — {}{}",
            wave.wave,
            wave.cutover,
            relative(wave.cutover_at, report.now),
            plural(wave.mailboxes, "mailbox", "mailboxes"),
            if wave.frozen { " — frozen" } else { "" }
        );
        if let Some(reason) = &wave.held {
            let _ = writeln!(out, "  HELD: {reason}");
            let _ = writeln!(out, "        {}", held_hint(report, wave));
        }
        let _ = writeln!(out, "  status: {}", statuses(wave));
        if wave.moved.is_empty() {
            let _ = writeln!(out, "  moved: nothing");
        } else {
            let m = &wave.moved_total;
            let _ = writeln!(
                out,
                "  moved: {}, {} messages, {}",
                plural(m.mailboxes, "mailbox", "mailboxes"),
                m.messages,
                bytes(m.bytes)
            );
            for line in &wave.moved {
                let _ = writeln!(
                    out,
                    "    {:<10} {:>4} done  {:>6} messages  {:>9}",
                    line.step.as_str(),
                    line.steps,
                    line.messages,
                    bytes(line.bytes)
                );
            }
        }
        if wave.failures.is_empty() {
            let _ = writeln!(out, "  failed: nothing");
        } else {
            let _ = writeln!(out, "  failed:");
            for group in &wave.failures {
                let _ = writeln!(
                    out,
                    "    {}: {} ({})",
                    group.kind,
                    plural(group.mailboxes, "mailbox", "mailboxes"),
                    plural(group.steps, "step", "steps")
                );
                let _ = writeln!(out, "      fix: {}", group.fix);
                for example in &group.examples {
                    let _ = writeln!(
                        out,
                        "      {} — {}: {}",
                        example.mailbox,
                        step_label(example.step, example.ordinal),
                        one_line(&example.detail)
                    );
                }
                if group.steps > group.examples.len() {
                    let _ = writeln!(out, "      … and {} more (--json)", group.steps - group.examples.len());
                }
            }
        }
        if wave.overdue.is_empty() {
            let _ = writeln!(out, "  overdue: none");
        } else {
            let _ = writeln!(out, "  OVERDUE (final sync not done after cutover):");
            for o in &wave.overdue {
                let _ = writeln!(
                    out,
                    "    {} — {}, final {}, {} after cutover{}",
                    o.mailbox,
                    o.status,
                    o.final_status.as_deref().unwrap_or("not planned"),
                    span(Duration::minutes(o.minutes_since_cutover)),
                    o.error
                        .as_deref()
                        .map(|e| format!(": {}", one_line(e)))
                        .unwrap_or_default()
                );
            }
        }
        if wave.due.is_empty() {
            let _ = writeln!(out, "  due next: nothing until {}", when(report.due_until));
        } else {
            let _ = writeln!(out, "  due next{}:", if wave.held.is_some() { " (held)" } else { "" });
            for line in &wave.due {
                let _ = writeln!(
                    out,
                    "    {:<10} {}  {}",
                    step_label(line.step, line.ordinal),
                    due_when(line, report),
                    due_count(line)
                );
            }
        }
    }
    out
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn status_colour(status: MailboxStatus) -> &'static str {
    match status {
        MailboxStatus::Planned => "#9e9e9e",
        MailboxStatus::InitialSync => "#64b5f6",
        MailboxStatus::Synced => "#1e88e5",
        MailboxStatus::ReadinessChecked => "#3949ab",
        MailboxStatus::FinalSync => "#8e24aa",
        MailboxStatus::Sweeping => "#00897b",
        MailboxStatus::Complete => "#2e7d32",
        MailboxStatus::Held => "#f9a825",
        MailboxStatus::Failed => "#c62828",
        MailboxStatus::MigratedBack => "#6d4c41",
    }
}

// Styles sit in the page and, for what matters most, on the elements too:
// some mail clients drop a page's <style>. No scripts, fonts or images.
const STYLE: &str = "
body{font-family:Arial,Helvetica,sans-serif;color:#222;background:#fff;max-width:60rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}
h2{font-size:1.2rem;margin:2rem 0 .25rem;border-top:2px solid #ddd;padding-top:1rem}
h3{font-size:1rem;margin:1rem 0 .25rem}
p{margin:.25rem 0}
table{border-collapse:collapse}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}
.meta{color:#555}
.none{color:#777;font-style:italic}
";

const TH: &str = "style=\"text-align:left;padding:4px 8px;border-bottom:1px solid #ccc\"";
const TD: &str = "style=\"padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top\"";
const TDN: &str = "style=\"padding:4px 8px;border-bottom:1px solid #eee;text-align:right;vertical-align:top\"";
const RED: &str = "#c62828";

fn badge(text: &str, colour: &str) -> String {
    format!(
        "<span style=\"display:inline-block;padding:1px 8px;border-radius:3px;background:{colour};color:#fff;font-size:.85rem;font-weight:bold\">{}</span>",
        esc(text)
    )
}

fn figure(out: &mut String, value: &str, label: &str, colour: &str) {
    let _ = write!(
        out,
        "<td style=\"padding:6px 18px 6px 0\"><div style=\"font-size:1.6rem;font-weight:bold;color:{colour}\">{}</div><div style=\"color:#555\">{}</div></td>",
        esc(value),
        esc(label)
    );
}

/// The status counts as one stacked bar (table cells, which every mail
/// client draws) and a legend.
fn status_bar(out: &mut String, wave: &WaveReport) {
    if wave.mailboxes == 0 {
        return;
    }
    out.push_str(
        "<table role=\"presentation\" width=\"100%\" style=\"width:100%;border-collapse:collapse;margin:.5rem 0\"><tr>",
    );
    for (status, n) in &wave.statuses {
        let share = (*n as f64 * 100.0 / wave.mailboxes as f64).max(1.0);
        let _ = write!(
            out,
            "<td title=\"{n} {status}\" style=\"width:{share:.1}%;height:14px;padding:0;background:{};border:0\">&nbsp;</td>",
            status_colour(*status)
        );
    }
    out.push_str("</tr></table><p>");
    for (status, n) in &wave.statuses {
        let _ = write!(
            out,
            "<span style=\"margin-right:14px;white-space:nowrap\"><span style=\"display:inline-block;width:10px;height:10px;background:{};margin-right:4px\">&nbsp;</span>{n} {}</span>",
            status_colour(*status),
            esc(status.as_str())
        );
    }
    out.push_str("</p>");
}

fn none(out: &mut String, text: &str) {
    let _ = write!(
        out,
        "<p class=\"none\" style=\"color:#777;font-style:italic\">{}</p>",
        esc(text)
    );
}

/// The report as one self-contained HTML page: no scripts, no external
/// fonts, images or style sheets; every text from the state is escaped.
fn html(report: &DailyReport, since: Duration) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let title = format!("Daily report — {} — {}", report.file, when(report.now));
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head>\n<body style=\"font-family:Arial,Helvetica,sans-serif;color:#222\">",
        esc(&title)
    );
    let _ = writeln!(
        out,
        "<h1>Daily report: {}</h1><p class=\"meta\" style=\"color:#555\">{} · moved and failed in the last {} (since {}) · due next until {}</p>",
        esc(&report.file),
        esc(&when(report.now)),
        esc(&span(since)),
        esc(&when(report.since)),
        esc(&when(report.due_until))
    );
    out.push_str("<table role=\"presentation\" style=\"border-collapse:collapse;margin:1rem 0\"><tr>");
    figure(&mut out, &t.mailboxes.to_string(), "mailboxes", "#222");
    figure(&mut out, &t.moved_mailboxes.to_string(), "moved", "#1e88e5");
    figure(&mut out, &t.messages.to_string(), "messages", "#1e88e5");
    figure(&mut out, &bytes(t.bytes), "copied", "#1e88e5");
    figure(
        &mut out,
        &t.failed_mailboxes.to_string(),
        "failing",
        if t.failed_mailboxes > 0 { RED } else { "#222" },
    );
    figure(
        &mut out,
        &t.overdue.to_string(),
        "overdue",
        if t.overdue > 0 { RED } else { "#222" },
    );
    if t.held_waves > 0 {
        let label = if t.held_waves == 1 { "wave held" } else { "waves held" };
        figure(&mut out, &t.held_waves.to_string(), label, "#f9a825");
    }
    out.push_str("</tr></table>\n");

    for wave in &report.waves {
        let _ = write!(out, "<h2>Wave {}", esc(&wave.wave));
        if wave.held.is_some() {
            let _ = write!(out, " {}", badge("HELD", "#f9a825"));
        }
        if wave.frozen {
            let _ = write!(out, " {}", badge("frozen", "#3949ab"));
        }
        if !wave.overdue.is_empty() {
            let _ = write!(out, " {}", badge("OVERDUE", RED));
        }
        let _ = writeln!(
            out,
            "</h2><p class=\"meta\" style=\"color:#555\">cutover {} ({}) · {}</p>",
            esc(&wave.cutover),
            esc(&relative(wave.cutover_at, report.now)),
            esc(&plural(wave.mailboxes, "mailbox", "mailboxes"))
        );
        if let Some(reason) = &wave.held {
            let _ = writeln!(
                out,
                "<p style=\"background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px\"><b>Held:</b> {}<br>{}</p>",
                esc(reason),
                esc(&held_hint(report, wave))
            );
        }
        status_bar(&mut out, wave);

        let _ = writeln!(out, "<h3>Moved in the last {}</h3>", esc(&span(since)));
        if wave.moved.is_empty() {
            none(&mut out, "nothing");
        } else {
            let _ = writeln!(
                out,
                "<table><tr><th {TH}>step</th><th {TH}>done</th><th {TH}>mailboxes</th><th {TH}>messages</th><th {TH}>copied</th></tr>"
            );
            for line in &wave.moved {
                let _ = writeln!(
                    out,
                    "<tr><td {TD}>{}</td><td {TDN}>{}</td><td {TDN}>{}</td><td {TDN}>{}</td><td {TDN}>{}</td></tr>",
                    esc(line.step.as_str()),
                    line.steps,
                    line.mailboxes,
                    line.messages,
                    esc(&bytes(line.bytes))
                );
            }
            let m = &wave.moved_total;
            let _ = writeln!(
                out,
                "<tr><td {TD}><b>total</b></td><td {TD}></td><td {TDN}><b>{}</b></td><td {TDN}><b>{}</b></td><td {TDN}><b>{}</b></td></tr></table>",
                m.mailboxes,
                m.messages,
                esc(&bytes(m.bytes))
            );
        }

        out.push_str("<h3>Failed</h3>\n");
        if wave.failures.is_empty() {
            none(&mut out, "nothing");
        } else {
            let _ = writeln!(
                out,
                "<table><tr><th {TH}>why</th><th {TH}>mailboxes</th><th {TH}>examples</th><th {TH}>fix to try</th></tr>"
            );
            for group in &wave.failures {
                let mut examples = String::new();
                for example in &group.examples {
                    let _ = write!(
                        examples,
                        "<div style=\"margin-bottom:4px\"><b>{}</b> — {}: {}</div>",
                        esc(&example.mailbox),
                        esc(&step_label(example.step, example.ordinal)),
                        esc(&one_line(&example.detail))
                    );
                }
                if group.steps > group.examples.len() {
                    let _ = write!(
                        examples,
                        "<div style=\"color:#777\">… and {} more</div>",
                        group.steps - group.examples.len()
                    );
                }
                let _ = writeln!(
                    out,
                    "<tr><td {TD}><b style=\"color:{RED}\">{}</b></td><td {TDN}>{}</td><td {TD}>{examples}</td><td {TD}>{}</td></tr>",
                    esc(group.kind.as_str()),
                    group.mailboxes,
                    esc(group.fix)
                );
            }
            out.push_str("</table>\n");
        }

        out.push_str("<h3>Overdue</h3>\n");
        if wave.overdue.is_empty() {
            none(&mut out, "none");
        } else {
            let _ = writeln!(
                out,
                "<p>Final sync not done after cutover: look at these at once.</p><table><tr><th {TH}>mailbox</th><th {TH}>status</th><th {TH}>final sync</th><th {TH}>since cutover</th><th {TH}>error</th></tr>"
            );
            for o in &wave.overdue {
                let _ = writeln!(
                    out,
                    "<tr><td {TD}><b style=\"color:{RED}\">{}</b></td><td {TD}>{}</td><td {TD}>{}</td><td {TDN}>{}</td><td {TD}>{}</td></tr>",
                    esc(&o.mailbox),
                    esc(o.status.as_str()),
                    esc(o.final_status.as_deref().unwrap_or("not planned")),
                    esc(&span(Duration::minutes(o.minutes_since_cutover))),
                    esc(&o.error.as_deref().map(one_line).unwrap_or_default())
                );
            }
            out.push_str("</table>\n");
        }

        let _ = writeln!(
            out,
            "<h3>Due next{}</h3>",
            if wave.held.is_some() { " (held)" } else { "" }
        );
        if wave.due.is_empty() {
            none(&mut out, &format!("nothing until {}", when(report.due_until)));
        } else {
            let _ = writeln!(
                out,
                "<table><tr><th {TH}>step</th><th {TH}>due</th><th {TH}>mailboxes</th></tr>"
            );
            for line in &wave.due {
                let _ = writeln!(
                    out,
                    "<tr><td {TD}>{}</td><td {TD}>{}</td><td {TD}>{}</td></tr>",
                    esc(&step_label(line.step, line.ordinal)),
                    esc(&due_when(line, report)),
                    esc(&due_count(line))
                );
            }
            out.push_str("</table>\n");
        }
    }
    let _ = writeln!(
        out,
        "<p class=\"meta\" style=\"color:#777;margin-top:2rem;font-size:.85rem\">Made by cutover report at {}. Times in UTC; cutover moments as planned, with their offset.</p>\n</body></html>",
        esc(&when(report.now))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_sizes() {
        assert_eq!(span(Duration::hours(24)), "24h");
        assert_eq!(span(Duration::days(7)), "7d");
        assert_eq!(span(Duration::hours(54)), "2d 6h");
        assert_eq!(span(Duration::minutes(90)), "1h 30m");
        assert_eq!(span(Duration::minutes(-40)), "40m");
        assert_eq!(span(Duration::hours(30)), "30h");
        assert_eq!(bytes(980), "980 B");
        assert_eq!(bytes(12_400), "12.4 kB");
        assert_eq!(bytes(2_400_000_000), "2.40 GB");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert_eq!(one_line(&"é".repeat(300)).chars().count(), 240);
    }
}
