//! Markdown tables for the e2e bench: one per workload, medians over rounds, ratios to direct;
//! the comparisons the targets are set on (pgrouter against HAProxy, pgrouter-txn against
//! pgbouncer) and W4.

use std::fmt::Write as _;

use pgrouter_lab::stats::median_interval;

use crate::idle;
use crate::pgbench::command_line;
use crate::workloads::{w1_args, w3_args, Cell, Table, Target};

const DIRECT: &str = "direct";
const HAPROXY: &str = "HAProxy";
const PASSTHROUGH: &str = "pgrouter";
const PGBOUNCER: &str = "pgbouncer";
const PGBOUNCER_1HOP: &str = "pgbouncer-1hop";
const POOLED: &str = "pgrouter-txn";

fn index(targets: &[Target], name: &str) -> Option<usize> {
    targets.iter().position(|t| t.name == name)
}

pub fn w1(out: &mut String, targets: &[Target], table: &Table<(&str, u32)>, duration: u32) {
    heading(
        out,
        "W1 ladder",
        &w1_args("<mode>", 0, duration),
        "<clients>",
    );
    out.push_str("| mode | clients | target | tps | vs direct | proxy CPU us/txn |\n|---|---|---|---|---|---|\n");
    let direct = index(targets, DIRECT);
    for ((mode, clients), cells) in table {
        for (t, cell) in targets.iter().zip(cells) {
            let _ = writeln!(
                out,
                "| {mode} | {clients} | {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 0),
                ratio(cell, direct.map(|d| &cells[d])),
                fmt_cpu(cell),
            );
        }
    }
}

pub fn w2(out: &mut String, targets: &[Target], table: &Table<u64>, duration: u32) {
    let rate = table.first().map_or(0, |r| r.0);
    let mut args = w1_args("simple", 16, duration);
    args.extend([format!("-R {rate} -l --log-prefix w2log")]);
    heading(
        out,
        "W2 latency at a fixed rate (70% of the slowest target's W1 -c 16 simple tps)",
        &args,
        "",
    );
    out.push_str("| target | rate | tps | p50 ms | p99 ms | added p50 ms | added p99 ms |\n|---|---|---|---|---|---|---|\n");
    let direct = index(targets, DIRECT);
    for (rate, cells) in table {
        let base = direct.and_then(|d| cells[d].latency());
        for (t, cell) in targets.iter().zip(cells) {
            let lat = cell.latency();
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3}", v / 1000.0));
            let added = |f: fn((f64, f64)) -> f64| match (lat, base) {
                (Some(l), Some(b)) if t.name != DIRECT => {
                    format!("{:+.3}", (f(l) - f(b)) / 1000.0)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {rate} | {} | {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 0),
                ms(lat.map(|l| l.0)),
                ms(lat.map(|l| l.1)),
                added(|l| l.0),
                added(|l| l.1),
            );
        }
    }
}

pub fn w3(out: &mut String, targets: &[Target], table: &Table<u32>, duration: u32) {
    heading(
        out,
        "W3 connection churn (new SCRAM connection per transaction)",
        &w3_args(0, duration),
        "<clients>",
    );
    out.push_str(
        "| clients | target | tps | vs direct | proxy CPU us/txn |\n|---|---|---|---|---|\n",
    );
    let direct = index(targets, DIRECT);
    for (clients, cells) in table {
        for (t, cell) in targets.iter().zip(cells) {
            let _ = writeln!(
                out,
                "| {clients} | {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 0),
                ratio(cell, direct.map(|d| &cells[d])),
                fmt_cpu(cell),
            );
        }
    }
}

pub fn w5(out: &mut String, targets: &[Target], table: &Table<&str>) {
    let direct = index(targets, DIRECT);
    for (name, cells) in table {
        let _ = write!(
            out,
            "\n### W5 bulk\n\n`psql -X -q -h 127.0.0.1 -p <port> -U postgres -d postgres -c \"COPY {name} TO STDOUT\" > (byte counter)` (MB = 10^6 bytes)\n\n"
        );
        out.push_str("| target | MB/s | vs direct | proxy CPU us/MB |\n|---|---|---|---|\n");
        for (t, cell) in targets.iter().zip(cells) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 1),
                ratio(cell, direct.map(|d| &cells[d])),
                fmt_cpu(cell),
            );
        }
    }
}

fn heading(out: &mut String, title: &str, args: &[String], clients: &str) {
    let mut line = command_line(args, "<port>");
    if !clients.is_empty() {
        line = line.replace("-c 0 ", &format!("-c {clients} "));
    }
    let _ = write!(out, "\n### {title}\n\n`{line}`\n\n");
}

fn fmt_value(cell: &Cell, decimals: usize) -> String {
    match cell.value() {
        Ok(v) => format!("{v:.decimals$}"),
        Err(e) => format!("fails: {}", e.replace('|', "/")),
    }
}

fn ratio(cell: &Cell, base: Option<&Cell>) -> String {
    match (cell.value(), base.map(Cell::value)) {
        (Ok(v), Some(Ok(b))) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

/// `12.3` for one proxy process, `20.1 (pgbouncer 14.0 + HAProxy 6.1)` for a chain.
fn fmt_cpu(cell: &Cell) -> String {
    let cpu = cell.cpu_us();
    match cpu.as_slice() {
        [] => "-".into(),
        [(_, v)] => format!("{v:.1}"),
        parts => {
            let total: f64 = parts.iter().map(|p| p.1).sum();
            let each: Vec<String> = parts.iter().map(|(n, v)| format!("{n} {v:.1}")).collect();
            format!("{total:.1} ({})", each.join(" + "))
        }
    }
}

/// pgrouter pass-through against HAProxy for every W1 setting both ran, with TARGETS.md's
/// target: >= 1.1x at -c 16, simple and prepared, with proxy CPU per transaction at or below
/// HAProxy's.
pub fn passthrough(out: &mut String, targets: &[Target], w1: Option<&Table<(&str, u32)>>) {
    let (Some(b), Some(p), Some(w1)) = (index(targets, HAPROXY), index(targets, PASSTHROUGH), w1)
    else {
        return;
    };
    out.push_str(
        "\n### Pass-through: pgrouter vs HAProxy\n\nBoth relay TCP to the leader, HAProxy with Patroni REST checks at its default threads, pgrouter at its \
         default worker_threads. Same runs as the tables above; the target also asks for proxy CPU per transaction at or below HAProxy's.\n\n",
    );
    versus_header(out, "HAProxy", "pgrouter");
    for ((mode, clients), cells) in w1 {
        let goal = (*clients == 16 && *mode != "extended").then_some(1.1);
        versus_row(
            out,
            "W1",
            &format!("{mode} -c {clients}"),
            &cells[b],
            &cells[p],
            goal,
            true,
        );
    }
}

/// pgrouter in transaction mode against pgbouncer for every W1 and W3 setting both ran: first
/// pgbouncer directly on the leader (one hop, as pgrouter is; issue 28's targets: >= 1.1x at
/// every client count and for churn), then behind HAProxy (the seeds' two hops; TARGETS.md's
/// >= 1.3x at -c 150, churn >= 1x).
pub fn pooled(
    out: &mut String,
    targets: &[Target],
    w1: Option<&Table<(&str, u32)>>,
    w3: Option<&Table<u32>>,
) {
    if w1.is_none() && w3.is_none() {
        return;
    }
    let Some(p) = index(targets, POOLED) else {
        return;
    };
    let layouts = [
        (
            PGBOUNCER_1HOP,
            "one hop: pgbouncer directly on the leader, as pgrouter is",
            "its CPU column is pgbouncer's alone",
        ),
        (
            PGBOUNCER,
            "two hops: pgbouncer in front of HAProxy, the seeds' layout",
            "its CPU column is pgbouncer + HAProxy",
        ),
    ];
    for (base, layout, cpu) in layouts {
        let Some(b) = index(targets, base) else {
            continue;
        };
        let one_hop = base == PGBOUNCER_1HOP;
        let _ = write!(
            out,
            "\n### Pooled: pgrouter-txn vs {base} ({layout})\n\nBoth in transaction mode with 20 server connections per pool, the same SCRAM secret in their userlist; \
             {cpu}. Same runs as the tables above.\n\n",
        );
        versus_header(out, base, "pgrouter-txn");
        for ((mode, clients), cells) in w1.into_iter().flatten() {
            let goal = if one_hop {
                Some(1.1)
            } else {
                (*clients == 150).then_some(1.3)
            };
            let setting = format!("{mode} -c {clients}");
            versus_row(out, "W1", &setting, &cells[b], &cells[p], goal, one_hop);
        }
        for (clients, cells) in w3.into_iter().flatten() {
            let setting = format!("-C -c {clients}");
            let goal = if one_hop { 1.1 } else { 1.0 };
            versus_row(
                out,
                "W3 churn",
                &setting,
                &cells[b],
                &cells[p],
                Some(goal),
                false,
            );
        }
    }
}

fn versus_header(out: &mut String, base: &str, ours: &str) {
    let _ = writeln!(
        out,
        "The verdict is taken on the rounds' own ratios: their median with the interval of order \
         statistics that holds the true median with the chance in brackets (90% or more from 5 rounds \
         up, whatever the spread; 75% with 3). Met: the whole interval is at or above the target; not \
         met: all of it is below; undecided: it straddles the target, so more rounds are needed.\n\n\
         | workload | setting | {base} tps | {ours} tps | {ours} / {base} | per round | median of the rounds' ratios [interval] | target | CPU us/txn {base} | CPU us/txn {ours} |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
}

/// One setting of a comparison: medians and the ratio of the medians; each round's own ratio
/// (the targets alternate within a round, so a round's ratio is a side-by-side one); the median
/// of those ratios with its distribution-free interval (`pgrouter_lab::stats`); and the verdict
/// against `goal`, taken on that interval: met when all of it is at or above the goal, not met
/// when all of it is below, undecided when it straddles the goal. With `cpu_goal` the verdict
/// also asks for our median CPU per transaction at or below the base's.
fn versus_row(
    out: &mut String,
    workload: &str,
    setting: &str,
    base: &Cell,
    ours: &Cell,
    goal: Option<f64>,
    cpu_goal: bool,
) {
    let ratio = match (ours.value(), base.value()) {
        (Ok(v), Ok(b)) if b > 0.0 => Some(v / b),
        _ => None,
    };
    let total = |c: &Cell| -> Option<f64> {
        let cpu = c.cpu_us();
        (!cpu.is_empty()).then(|| cpu.iter().map(|p| p.1).sum())
    };
    let rounds: Vec<Option<f64>> = base
        .0
        .iter()
        .zip(&ours.0)
        .map(|(b, o)| match (b, o) {
            (Ok(b), Ok(o)) if b.value > 0.0 => Some(o.value / b.value),
            _ => None,
        })
        .collect();
    // Every round must have its ratio: a failed round is not noise to leave out.
    let interval = rounds
        .iter()
        .copied()
        .collect::<Option<Vec<f64>>>()
        .and_then(median_interval);
    let verdict = match (goal, interval) {
        (None, _) => "-".to_string(),
        (Some(g), None) => format!(">= {g:.1}x: -"),
        (Some(g), Some(i)) => {
            let cpu_ok =
                !cpu_goal || matches!((total(ours), total(base)), (Some(o), Some(b)) if o <= b);
            let met = if !cpu_ok || i.high < g {
                "not met"
            } else if i.low >= g {
                "met"
            } else {
                "undecided"
            };
            let cpu = if cpu_goal { ", CPU <=" } else { "" };
            format!(">= {g:.1}x{cpu}: {met}")
        }
    };
    let rounds: Vec<String> = rounds
        .iter()
        .map(|r| r.map_or("-".into(), |r| format!("{r:.2}")))
        .collect();
    let interval = interval.map_or("-".into(), |i| {
        format!(
            "{:.3}x [{:.2}, {:.2}] ({:.0}%)",
            i.median,
            i.low,
            i.high,
            i.coverage * 100.0
        )
    });
    let _ = writeln!(
        out,
        "| {workload} | {setting} | {} | {} | {} | {} | {interval} | {verdict} | {} | {} |",
        fmt_value(base, 0),
        fmt_value(ours, 0),
        ratio.map_or("-".into(), |r| format!("{r:.3}x")),
        rounds.join(", "),
        fmt_cpu(base),
        fmt_cpu(ours),
    );
}

/// W4: idle clients per target, then W1 -c 16 simple beside them.
pub fn w4(
    out: &mut String,
    rows: &[(&str, Result<idle::Row, String>)],
    idle: usize,
    duration: u32,
) {
    let line = command_line(&w1_args("simple", 16, duration), "<port>");
    let _ = write!(
        out,
        "\n### W4 idle clients\n\n{idle} idle clients asked per target, each opened with tokio-postgres (startup, SCRAM-SHA-256, \
         ReadyForQuery; 32 at a time) and left idle. Proxy RSS: VmRSS of the process the clients connect to (pgbouncer itself, \
         not HAProxy), before opening, 1 s after the last one opened, and 2 s after closing them; per client = (with - before) / opened, where before is the RSS before the first round's opening on that process (the allocator keeps \
         what earlier rounds' clients used, so later rounds add little). \
         Active load: `{line}` before opening, beside the idle clients, and after closing them; change = with / mean(before, after) - 1 \
         (target: > -5%, and <= 4 KiB per idle client); CPU: the target's proxy processes (pgbouncer: pgbouncer + HAProxy) in the runs before and beside. Alive: idle clients answering `select 1` after the loaded run.\n\n\
         | target | round | idle clients | open s | RSS before MiB | RSS with idle MiB | bytes per idle client | RSS after close MiB | \
         tps before / after | tps with idle | change | CPU us/txn without / with | alive after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut notes = Vec::new();
    for (name, row) in rows {
        let r = match row {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "| {name} | - | fails: {} | | | | | | | | | | |",
                    e.replace('|', "/")
                );
                continue;
            }
        };
        let mib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1048576.0));
        let tps = |o: &crate::workloads::Outcome| match o {
            Ok(m) => format!("{:.0}", m.value),
            Err(e) => format!("fails: {}", e.replace('|', "/")),
        };
        let cpu = |o: &crate::workloads::Outcome| match o {
            Ok(m) if !m.cpu_us.is_empty() => {
                format!("{:.1}", m.cpu_us.iter().map(|c| c.1).sum::<f64>())
            }
            _ => "-".into(),
        };
        let with = r.runs[1].as_ref().ok().map(|m| m.value);
        let change = match (with, r.tps_without()) {
            (Some(w), Some(b)) if b > 0.0 => format!("{:+.1}%", (w / b - 1.0) * 100.0),
            _ => "-".into(),
        };
        let mut clients = format!("{} of {}", r.opened, r.asked);
        if let Some(n) = &r.note {
            notes.push(format!("{name}: {} idle clients asked ({n})", r.asked));
            clients.push_str(" (see below)");
        }
        if let Some(e) = &r.open_error {
            notes.push(format!("{name}: opening idle clients: {e}"));
        }
        if let Some(e) = &r.alive_error {
            notes.push(format!("{name}: select 1 on idle clients: {e}"));
        }
        let _ = writeln!(
            out,
            "| {name} | {} | {clients} | {:.1} | {} | {} | {} | {} | {} / {} | {} | {change} | {} / {} | {} |",
            r.round + 1,
            r.open_secs,
            mib(r.rss[0]),
            mib(r.rss[1]),
            r.bytes_per_client().map_or("-".into(), |b| format!("{b:.0}")),
            mib(r.rss[2]),
            tps(&r.runs[0]),
            tps(&r.runs[2]),
            tps(&r.runs[1]),
            cpu(&r.runs[0]),
            cpu(&r.runs[1]),
            r.alive,
        );
    }
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
}

/// Notes on the targets: why one did not start, what the pooling check found.
pub fn notes(out: &mut String, notes: &[String]) {
    if notes.is_empty() {
        return;
    }
    out.push_str("\n### Targets\n\n");
    for n in notes {
        let _ = writeln!(out, "- {}", n.replace('\n', " "));
    }
}
