//! Markdown tables for the e2e bench: one per workload, medians over rounds, ratios to direct.

use std::fmt::Write as _;

use crate::pgbench::command_line;
use crate::workloads::{w1_args, w3_args, Cell, Table, Target};

/// Index of the `direct` target: ratios are taken against it.
const DIRECT: usize = 0;

pub fn w1(out: &mut String, targets: &[Target], table: &Table<(&str, u32)>, duration: u32) {
    heading(
        out,
        "W1 ladder",
        &w1_args("<mode>", 0, duration),
        "<clients>",
    );
    out.push_str("| mode | clients | target | tps | vs direct | proxy CPU us/txn |\n|---|---|---|---|---|---|\n");
    for ((mode, clients), cells) in table {
        for (t, cell) in targets.iter().zip(cells) {
            let _ = writeln!(
                out,
                "| {mode} | {clients} | {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 0),
                ratio(cell, &cells[DIRECT]),
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
    for (rate, cells) in table {
        let base = cells[DIRECT].latency();
        for (t, cell) in targets.iter().zip(cells) {
            let lat = cell.latency();
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3}", v / 1000.0));
            let added = |f: fn((f64, f64)) -> f64| match (lat, base) {
                (Some(l), Some(b)) if !std::ptr::eq(cell, &cells[DIRECT]) => {
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
    for (clients, cells) in table {
        for (t, cell) in targets.iter().zip(cells) {
            let _ = writeln!(
                out,
                "| {clients} | {} | {} | {} | {} |",
                t.name,
                fmt_value(cell, 0),
                ratio(cell, &cells[DIRECT]),
                fmt_cpu(cell),
            );
        }
    }
}

pub fn w5(out: &mut String, targets: &[Target], table: &Table<&str>) {
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
                ratio(cell, &cells[DIRECT]),
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

fn ratio(cell: &Cell, direct: &Cell) -> String {
    match (cell.value(), direct.value()) {
        (Ok(v), Ok(d)) if d > 0.0 => format!("{:.2}x", v / d),
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
