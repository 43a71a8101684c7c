#!/usr/bin/env bash
# Log benchmarks: write→print latency (p50/p99) and the highest zero-loss rate to one follower.
# Release builds; real Docker; about a minute. Results: lines starting with BENCH.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo test --release -p pier-e2e --test logs_bench -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -oE 'BENCH.*|test result.*|panicked.*'
