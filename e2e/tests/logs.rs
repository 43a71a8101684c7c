//! `pier logs` end to end: every instance and source, live following across scaling and a
//! controller restart, exact drop accounting under a burst, and readers that never read.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pier_e2e::pier_api::{AppConfigRequest, LogSource, ProcessType};
use pier_e2e::*;

fn logger() -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures/logger"))
}

/// A running `pier` command whose stdout lines arrive on a channel (killed on drop).
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(p: &Platform, args: &[&str]) -> Follower {
        let mut child = p
            .pier_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pier");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads until a line satisfies `f`; returns it.
    fn wait_for(&mut self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| f(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = f(&l);
                    self.seen.push(l.clone());
                    if hit {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "`pier logs` printed no line with {what} within {timeout:?}; last lines:\n{}",
                    self.seen[self.seen.len().saturating_sub(30)..].join("\n")
                ),
            }
        }
    }

    fn wait_for_text(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(needle, timeout, |l| l.contains(needle))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scale(p: &Platform, app: &str, instances: u32) {
    let config = AppConfigRequest {
        instances: Some(instances),
        ..Default::default()
    };
    p.call(p.api().put_app(&app_name(app), &config))
        .unwrap_or_else(|e| panic!("scale: {e}"));
}

fn json_lines(lines: &[String]) -> Vec<PrintedLog> {
    lines.iter().map(|l| PrintedLog::parse(l)).collect()
}

fn is_terminal_format(line: &str) -> bool {
    // 2026-11-25T12:00:00.12+0000 [SOURCE] OUT text
    let b = line.as_bytes();
    line.len() > 30
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && &line[22..28] == "+0000 "
        && b[28] == b'['
}

#[test]
fn logs_follow_every_instance_scaling_router_and_crash() {
    let p = Platform::start();
    let app = logger();
    let out = p.pier_ok(&["push", "logger", "-i", "3"], app.path());
    assert!(
        out.contains("[CELL/0] OUT"),
        "push shows the instances starting:\n{out}"
    );

    let mut f = Follower::start(&p, &["logs", "logger"]);
    // Recent lines first: the staging, then each instance's output with its own tag.
    f.wait_for_text("[STG/0] OUT", Duration::from_secs(10));
    for i in 0..3 {
        f.wait_for_text(
            &format!("[APP/PROC/WEB/{i}] OUT logger instance={i} listening"),
            Duration::from_secs(10),
        );
    }
    let sample = f.wait_for_text("[APP/PROC/WEB/0] OUT", Duration::from_secs(1));
    assert!(is_terminal_format(&sample), "terminal format: {sample}");
    f.wait_for_text("[API/0] OUT", Duration::from_secs(1));

    // Scaling up while following: the new instance shows up on the same connection.
    scale(&p, "logger", 4);
    f.wait_for_text(
        "[APP/PROC/WEB/3] OUT logger instance=3 listening",
        Duration::from_secs(60),
    );
    f.wait_for_text("[CELL/3] OUT", Duration::from_secs(5));

    // stderr is ERR.
    let (status, body) = p.get_via_router("logger.localhost", "/err");
    assert_eq!(status, 200, "{body}");
    f.wait_for("an ERR line", Duration::from_secs(10), |l| {
        l.contains("] ERR to stderr instance=")
    });

    // Router access lines, with the status code.
    let (status, _) = p.get_via_router("logger.localhost", "/missing?x=1");
    assert_eq!(status, 404);
    let rtr = f.wait_for_text(
        "[RTR/0] OUT logger.localhost - \"GET /missing?x=1\" 404 ",
        Duration::from_secs(10),
    );
    assert!(
        rtr.contains("vcap_request_id:") && rtr.contains("response_time:"),
        "{rtr}"
    );

    // A crash is a CELL line with the exit status.
    let _ = p.get_via_router("logger.localhost", "/crash");
    let crash = f.wait_for("a crash", Duration::from_secs(20), |l| {
        l.contains("[CELL/") && l.contains("exited with status 7")
    });
    assert!(is_terminal_format(&crash), "{crash}");

    // --recent prints the buffer and exits; --json is one object per line.
    let recent = p.pier_ok(&["logs", "logger", "--recent", "--json"], app.path());
    let objs = json_lines(&recent.lines().map(str::to_string).collect::<Vec<_>>());
    let web3 = LogSource::app(&ProcessType::web(), 3);
    assert!(objs.iter().any(|o| o.line.source == web3));
    assert!(objs.iter().any(|o| o.line.source == LogSource::Router(0)));
    let seqs: Vec<u64> = objs.iter().map(|o| o.line.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order");

    // Logs need the token.
    let refused = p
        .call(p.api_with(None).recent_logs(&app_name("logger")))
        .expect_err("logs without a token");
    assert_eq!(
        refused.status().map(|s| s.as_u16()),
        Some(401),
        "{refused:?}"
    );
}

#[test]
fn burst_of_100000_lines_is_all_received_or_counted_and_stalled_readers_block_nothing() {
    let p = Platform::start();
    let app = logger();
    p.pier_ok(&["push", "logger", "-i", "1"], app.path());

    // A reader that opens the stream and never reads a byte.
    let api = p.api.trim_start_matches("http://");
    let mut stalled = std::net::TcpStream::connect(api).expect("connect");
    write!(
        stalled,
        "GET /v1/apps/logger/logs/stream HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\n\r\n",
        p.token
    )
    .unwrap();

    let mut f = Follower::start(&p, &["logs", "logger", "--json"]);
    f.wait_for_text("logger instance=0 listening", Duration::from_secs(10));
    // The burst starts after the request's RTR line, so only burst lines are in its seq range.
    let (status, _) = p.get_via_router("logger.localhost", "/burst?n=100000&delay_ms=300");
    assert_eq!(status, 200);
    let begin = f.wait_for_text("burst-begin", Duration::from_secs(30));
    let started = Instant::now();
    let end = f.wait_for_text("burst-end", Duration::from_secs(120));
    let took = started.elapsed();

    let begin_seq = PrintedLog::parse(&begin).line.seq;
    let end = PrintedLog::parse(&end);
    let end_seq = end.line.seq;
    let mut received = 0u64;
    let mut dropped = 0u64;
    let mut last_n: Option<u64> = None;
    let mut last_seq = begin_seq;
    for o in json_lines(&f.seen) {
        let seq = o.line.seq;
        if seq <= begin_seq || seq >= end_seq {
            continue;
        }
        assert!(seq > last_seq, "seq in order: {o:?}");
        if let Some(d) = o.dropped {
            assert_eq!(
                o.first_seq,
                Some(last_seq + 1),
                "drops are contiguous: {o:?}"
            );
            dropped += d;
        } else {
            let n: u64 = o
                .line
                .text
                .strip_prefix("burst ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("only burst lines between the markers: {o:?}"));
            assert!(last_n.is_none_or(|l| n > l), "lines in order: {o:?}");
            last_n = Some(n);
            received += 1;
        }
        last_seq = seq;
    }
    eprintln!(
        "burst: received {received}, dropped {dropped}, in {:.2} s ({}); app: {}",
        took.as_secs_f64(),
        end_seq - begin_seq - 1,
        end.line.text
    );
    assert_eq!(
        received + dropped,
        100_000,
        "every line received or counted"
    );
    assert_eq!(end_seq - begin_seq - 1, 100_000);

    // The stalled reader slowed neither the app nor this reader: the app wrote its burst at its
    // own pace, and a second burst is still followed promptly.
    let elapsed_ms: u64 = end
        .line
        .text
        .rsplit("elapsed_ms=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        elapsed_ms < 10_000,
        "the app wrote 100000 lines in {elapsed_ms} ms"
    );
    let (status, _) = p.get_via_router("logger.localhost", "/burst?n=1000");
    assert_eq!(status, 200);
    f.wait_for("the second burst's end", Duration::from_secs(10), |l| {
        l.contains("burst-end") && l.contains("n=1000 ")
    });
    drop(stalled);
}

#[test]
fn recent_survives_kill_9_and_a_follower_resumes_without_duplicates() {
    let mut p = Platform::start();
    let app = logger();
    p.pier_ok(&["push", "logger", "-i", "1"], app.path());
    let (status, _) = p.get_via_router("logger.localhost", "/tick?ms=50");
    assert_eq!(status, 200);

    let mut f = Follower::start(&p, &["logs", "logger", "--json"]);
    f.wait_for_text("tick instance=0 n=20", Duration::from_secs(10));
    // Lines are written to disk every 100 ms.
    std::thread::sleep(Duration::from_millis(400));
    let before = p.pier_ok(&["logs", "logger", "--recent", "--json"], app.path());
    let before = json_lines(&before.lines().map(str::to_string).collect::<Vec<_>>());

    p.controller.as_mut().expect("controller").kill9();
    // The app goes on printing while no controller watches.
    std::thread::sleep(Duration::from_secs(1));
    p.start_controller();

    let after = p.pier_ok(&["logs", "logger", "--recent", "--json"], app.path());
    let after = json_lines(&after.lines().map(str::to_string).collect::<Vec<_>>());
    let first_before = before
        .iter()
        .find(|o| o.line.source == LogSource::Staging(0))
        .unwrap();
    assert!(
        after.iter().any(|o| o == first_before),
        "--recent after kill -9 has the lines from before: {first_before:?}"
    );

    // The follower reconnected by itself and goes on where it stopped.
    let last = f.wait_for("ticks after the restart", Duration::from_secs(30), |l| {
        l.contains("tick instance=0 n=")
            && serde_json::from_str::<PrintedLog>(l).is_ok_and(|o| {
                o.line
                    .text
                    .rsplit("n=")
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 80)
            })
    });
    let _ = last;
    let objs = json_lines(&f.seen);
    let mut distinct = std::collections::HashSet::new();
    for (o, printed) in objs.iter().zip(&f.seen) {
        assert!(distinct.insert(printed), "printed twice: {o:?}");
    }
    let ticks: Vec<u64> = objs
        .iter()
        .filter_map(|o| o.line.text.strip_prefix("tick instance=0 n=")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "no tick missing or repeated across the restart: {ticks:?}"
    );
    assert!(objs.iter().all(|o| o.dropped.is_none()), "nothing dropped");
}

#[test]
fn standalone_router_forwards_access_lines_as_rtr() {
    let p = Platform::start_with(Options {
        standalone_router: true,
        ..Options::default()
    });
    let app = logger();
    p.pier_ok(&["push", "logger", "-i", "1"], app.path());
    let (status, _) = p.get_via_router("logger.localhost", "/missing");
    assert_eq!(status, 404);
    eventually(
        Duration::from_secs(10),
        "an RTR line from pier-router",
        || {
            let recent = p.pier_ok(&["logs", "logger", "--recent"], app.path());
            recent
                .lines()
                .any(|l| l.contains("[RTR/0] OUT logger.localhost - \"GET /missing\" 404 "))
                .then_some(())
        },
    );
}

#[test]
fn lines_mixing_stdout_and_stderr_at_a_high_rate_are_all_published_once() {
    let p = Platform::start();
    let app = logger();
    p.pier_ok(&["push", "logger", "-i", "1"], app.path());
    let mut f = Follower::start(&p, &["logs", "logger", "--json"]);
    f.wait_for_text("logger instance=0 listening", Duration::from_secs(10));
    let (n, rounds) = (20_000u64, 3u64);
    let (status, _) =
        p.get_via_router("logger.localhost", &format!("/mixed?n={n}&rounds={rounds}"));
    assert_eq!(status, 200);
    // The end marker is written to both streams, last.
    for stream in ["\"OUT\"", "\"ERR\""] {
        f.wait_for("the end marker", Duration::from_secs(120), |l| {
            l.contains("mixed-end") && l.contains(stream)
        });
    }
    let mut seen = std::collections::HashSet::new();
    let mut dropped = 0u64;
    for o in json_lines(&f.seen) {
        if let Some(d) = o.dropped {
            dropped += d;
            continue;
        }
        let t = &o.line.text;
        if t.starts_with("mixed ") || t.starts_with("tail ") {
            assert!(seen.insert(t.clone()), "published twice: {t}");
        }
    }
    let expected = rounds * (n + 2001);
    assert_eq!(
        seen.len() as u64 + dropped,
        expected,
        "every line of the mixed bursts arrived or was counted ({} arrived, {dropped} counted)",
        seen.len()
    );
    // A reader that keeps up misses nothing at all here: no loss to account for.
    assert_eq!(dropped, 0, "the follower kept up");
    for r in 0..rounds {
        assert!(
            seen.contains(&format!("tail {r} 2000")),
            "the lone stderr line of round {r}"
        );
        assert!(
            seen.contains(&format!("tail {r} 1999")),
            "the stdout line before it"
        );
    }
}
