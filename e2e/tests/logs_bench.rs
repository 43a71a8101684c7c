//! Log benchmarks (ignored by default; run with `bench/logs.sh`, which uses release builds).
//!
//! - latency: the logger app prints `stamp <unix time>` lines 20 ms apart; `pier logs --json`
//!   runs as a child, and each line is timed when its stdout line is read here. Same host, same
//!   clock, so the difference is write → Docker → controller → HTTP → pier → stdout.
//! - rate: the app logs at a steady rate for 3 s per step (doubling); a step passes when
//!   `pier logs` received every line and no drop notice. Reports the highest passing step.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pier_e2e::*;

fn follow(p: &Platform) -> (std::process::Child, mpsc::Receiver<(f64, String)>) {
    let mut child = p
        .pier_command(["logs", "logger", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pier");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            if tx.send((now, line)).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn text(line: &str) -> (PrintedLog, String) {
    let v = PrintedLog::parse(line);
    let t = v.line.text.clone();
    (v, t)
}

fn wait_text(rx: &mpsc::Receiver<(f64, String)>, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, l) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no {needle:?} within {timeout:?}"));
        if l.contains(needle) {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
#[ignore = "benchmark: run bench/logs.sh"]
fn bench_logs_latency_and_zero_loss_rate() {
    // The pipeline itself, without the per-app rate limit (which would cap the rate it finds).
    let p = Platform::start_with(Options {
        controller_args: vec!["--log-rate-limit".into(), "0".into()],
        ..Default::default()
    });
    let app = copy_dir(&repo_root().join("e2e/fixtures/logger"));
    p.pier_ok(&["push", "logger", "-i", "1"], app.path());
    let (mut child, rx) = follow(&p);
    wait_text(&rx, "logger instance=0 listening", Duration::from_secs(20));

    // Latency, with `docker logs -f` on the same container reading the same lines as the baseline
    // (the floor: Pier's path starts with Docker's own log follow).
    let container = p
        .instance_ids("logger")
        .pop()
        .expect("the logger's container");
    let mut docker = Command::new("docker")
        .args(["logs", "-f", "--since", "1s", &container])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docker logs");
    let (dtx, drx) = mpsc::channel::<f64>();
    let dout = docker.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(dout).lines() {
            let Ok(line) = line else { break };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            if let Some(ts) = line
                .trim()
                .strip_prefix("stamp ")
                .and_then(|v| v.parse::<f64>().ok())
            {
                if dtx.send((now - ts) * 1000.0).is_err() {
                    break;
                }
            }
        }
    });
    let count = 500;
    let (status, _) = p.get_via_router(
        "logger.localhost",
        &format!("/stamp?count={count}&gap_ms=20"),
    );
    assert_eq!(status, 200);
    let mut lat = Vec::new();
    while lat.len() < count {
        let (at, l) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stamp lines");
        let (_, t) = text(&l);
        if let Some(ts) = t.strip_prefix("stamp ").and_then(|v| v.parse::<f64>().ok()) {
            lat.push((at - ts) * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "BENCH latency write→print over {count} lines: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let mut base: Vec<f64> = (0..count)
        .map_while(|_| drx.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    let _ = docker.kill();
    let _ = docker.wait();
    if !base.is_empty() {
        base.sort_by(f64::total_cmp);
        println!(
            "BENCH baseline docker logs -f, same {} lines: p50 {:.1} ms, p99 {:.1} ms",
            base.len(),
            percentile(&base, 0.5),
            percentile(&base, 0.99)
        );
    }

    // Highest steady rate with zero loss.
    let mut best = 0;
    let mut r = 5_000;
    while r <= 320_000 {
        let (status, _) = p.get_via_router("logger.localhost", &format!("/rate?r={r}&secs=3"));
        assert_eq!(status, 200);
        let mut received = 0u64;
        let mut dropped = 0u64;
        let mut achieved = String::new();
        let mut total = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok((_, l)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let (v, t) = text(&l);
            if let Some(d) = v.dropped {
                dropped += d;
            } else if t.starts_with(&format!("rate-begin r={r} ")) {
                total = t
                    .rsplit("total=")
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            } else if t.starts_with(&format!("rate-end r={r} ")) {
                achieved = t.rsplit("achieved=").next().unwrap_or("").to_string();
                break;
            } else if t.starts_with("rate ") {
                received += 1;
            }
        }
        let achieved_rate: f64 = achieved.parse().unwrap_or(0.0);
        println!(
            "BENCH rate target {r}/s (app achieved {achieved}/s): received {received}/{total}, dropped {dropped}"
        );
        // Past what the app itself can write, a higher target measures nothing new.
        if received != total || dropped != 0 || achieved_rate < 0.9 * r as f64 {
            break;
        }
        best = r;
        r *= 2;
    }
    println!("BENCH highest steady rate with zero loss to one follower: {best} lines/s");
    let _ = child.kill();
    let _ = child.wait();
}
