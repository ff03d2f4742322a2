//! Resident memory of the in-memory rate limiter with one million distinct clients.
//!
//! ```sh
//! cargo run --release --example ratelimit_memory
//! ```
//!
//! One request from each of 1,000,000 distinct IPv4 clients (the worst case: every one
//! needs its own entry), on a simulated clock so the run takes seconds. Measured on
//! Linux from /proc/self/status; elsewhere it prints the key counts only.

use orga_proxy::clock::Clock;
use orga_proxy::ratelimit::{ClientKey, LocalLimiter, Rate};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: u32 = 1_000_000;

fn main() {
    let rate = Rate::per_minute(30, 10);
    println!(
        "{CLIENTS} distinct clients, 30/min, burst 10, one request each over 10 simulated s\n"
    );
    println!("{:<44} {:>10} {:>12}", "", "tracked", "RSS");
    let baseline = rss_kib();
    report("baseline (process, no limiter)", 0, baseline);

    run(
        "uncapped (max_tracked_clients = 2,000,000)",
        rate,
        2_000_000,
    );
    run("default cap (max_tracked_clients = 100,000)", rate, 100_000);
}

fn run(label: &str, rate: Rate, max_keys: usize) {
    let clock = Clock::manual(std::time::SystemTime::now());
    let limiter = Arc::new(LocalLimiter::<ClientKey>::new(
        rate,
        max_keys,
        Duration::from_secs(30),
        clock.clone(),
    ));
    let step = Duration::from_secs(10) / CLIENTS;
    let started = Instant::now();
    let mut admitted = 0u32;
    for n in 0..CLIENTS {
        // 10.0.0.0 upwards: a million distinct addresses.
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        if limiter.check(&ClientKey::new(ip, 64)).is_admitted() {
            admitted += 1;
        }
        clock.advance(step);
    }
    let elapsed = started.elapsed();
    report(label, limiter.tracked(), rss_kib());
    println!(
        "{:<44} {:>10} {:>12}",
        format!(
            "  ({} admitted, {:.0} ns per check)",
            admitted,
            elapsed.as_nanos() as f64 / f64::from(CLIENTS)
        ),
        "",
        ""
    );
    // Everyone goes idle: past the refill time the sweep drops every entry.
    clock.advance(rate.full_refill() + Duration::from_secs(1));
    limiter.sweep();
    report("  after the idle sweep", limiter.tracked(), rss_kib());
}

fn report(label: &str, tracked: usize, rss: Option<u64>) {
    let rss = rss.map_or("n/a".into(), |kib| {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    });
    println!("{label:<44} {tracked:>10} {rss:>12}");
}

/// Resident set size in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
