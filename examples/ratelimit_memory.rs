//! Resident memory of the in-memory rate limiter with one million distinct clients.
//!
//! ```sh
//! cargo run --release --example ratelimit_memory
//! ```
//!
//! One request from each of 1,000,000 distinct IPv4 clients (the worst case: every one
//! needs its own entry), on a simulated clock so the run takes seconds. Under the cap,
//! once the table is full, each new client evicts the tracked one closest to a full
//! budget; the cost of a check is shown while the table fills and once it is full.
//! Measured on Linux from /proc/self/status; elsewhere it prints the key counts only.

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

    // The capped run first, so that its figure owes nothing to memory the allocator
    // keeps from the larger one.
    run("default cap (max_tracked_clients = 100,000)", rate, 100_000);
    run(
        "uncapped (max_tracked_clients = 2,000,000)",
        rate,
        2_000_000,
    );
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
    let mut admitted = 0u32;
    let mut check = |n: u32| {
        // 10.0.0.0 upwards: a million distinct addresses.
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        if limiter.check(&ClientKey::new(ip, 64)).is_admitted() {
            admitted += 1;
        }
        clock.advance(step);
    };
    // Until the table is full, then the rest (each evicting one when capped).
    let filling = u32::try_from(max_keys).unwrap_or(u32::MAX).min(CLIENTS);
    let started = Instant::now();
    (0..filling).for_each(&mut check);
    let fill_time = started.elapsed();
    let started = Instant::now();
    (filling..CLIENTS).for_each(&mut check);
    let full_time = started.elapsed();
    let tracked = limiter.tracked();
    report(label, tracked, rss_kib());
    println!(
        "  {admitted} admitted, {} evicted",
        (CLIENTS as usize).saturating_sub(tracked)
    );
    println!(
        "  {:.0} ns per check while the table fills",
        per_check(fill_time, filling)
    );
    if filling < CLIENTS {
        println!(
            "  {:.0} ns per check once it is full",
            per_check(full_time, CLIENTS - filling)
        );
    }
    // Everyone goes idle: past the refill time the sweep drops every entry.
    clock.advance(rate.full_refill() + Duration::from_secs(1));
    limiter.sweep();
    report("  after the idle sweep", limiter.tracked(), rss_kib());
}

fn per_check(elapsed: Duration, checks: u32) -> f64 {
    elapsed.as_nanos() as f64 / f64::from(checks.max(1))
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
