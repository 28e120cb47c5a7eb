//! Benchmarks of the ingest path through the library (no HTTP).
//!
//! * `ingest/build_request`: building the `TickRequest` alone (cloning a tag set), which the
//!   next bench includes, to read it against.
//! * `ingest/in_memory`: `Service::check_tick` + `Store::apply_tick`, no durability: the CPU
//!   and sled-transaction cost of one tick on the calling thread (with an untimed flush every
//!   [`IN_MEMORY_CHUNK`] ticks).
//! * `ingest/durable_serial`: `Service::log_tick(..).await` one at a time; each tick waits for
//!   its own flush (fsync of sled's log).
//! * `ingest/durable_concurrent_32`: 32 `log_tick` calls in flight at once (32 tokio tasks,
//!   joined), so the flush thread lets them share flushes (group commit). Reported per tick.
//!
//! Supporters: tokens are created through `Service::create_token` as the admin. The bench
//! policy raises the per-supporter cap to 10000 and a pool hands each token out for exactly
//! that many ticks, creating more tokens (outside the timed section) as the run needs them, so
//! no tick is ever refused for the cap. A watchdog aborts the run if no sample finishes for
//! [`STALL_LIMIT`], so a storage hang fails the bench instead of hanging it. Run with
//! `cargo bench --bench ingest`; see benches/README.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tellestrek::clock::{Clock, FixedClock};
use tellestrek::domain::TagSet;
use tellestrek::policy::{DEFAULT_POLICY, Policy};
use tellestrek::service::{NewTokenRequest, Principal, Service, TickRequest};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const NOW: &str = "2026-11-23T10:00:00Z";
const ORG: &str = "helse-vestfjord";
/// Ticks each supporter token may log in a period under the bench policy (the most the policy
/// validation allows).
const CAP: u64 = 10_000;
/// Ticks in flight at once in the concurrent bench.
const CONCURRENCY: usize = 32;
/// Ticks the in-memory bench applies between two (untimed) flushes. Hundreds of thousands of
/// unflushed writes to the same few keys deadlock sled 0.34.7: a writer holding the segment
/// accountant's lock waits for a file truncation queued on sled's I/O pool, whose threads all
/// wait for that lock (seen here; compare spacejam/sled#1412). The server never runs that far
/// ahead of a flush, since every tick waits for one.
const IN_MEMORY_CHUNK: u64 = 1_000;
/// How long the run may go without finishing a sample before the watchdog aborts it.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Seconds since [`START`] at which the last sample finished.
static LAST_PROGRESS: AtomicU64 = AtomicU64::new(0);
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn progress() {
    let start = START.get_or_init(Instant::now);
    LAST_PROGRESS.store(start.elapsed().as_secs(), Ordering::Relaxed);
}

/// Aborts the process if no sample finishes for [`STALL_LIMIT`].
fn start_watchdog() {
    progress();
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let now = START.get().map_or(0, |s| s.elapsed().as_secs());
            if now.saturating_sub(LAST_PROGRESS.load(Ordering::Relaxed)) > STALL_LIMIT.as_secs() {
                eprintln!(
                    "ingest bench: no sample finished for {}s; aborting (storage hang?)",
                    STALL_LIMIT.as_secs()
                );
                std::process::abort();
            }
        }
    });
}

/// The default policy with the per-supporter cap raised to [`CAP`].
fn bench_policy() -> Policy {
    let text = DEFAULT_POLICY.replace(
        "max_per_supporter_per_period = 40",
        &format!("max_per_supporter_per_period = {CAP}"),
    );
    assert_ne!(text, DEFAULT_POLICY, "the default policy's cap line moved");
    let policy = Policy::from_str("bench", &text).expect("bench policy is valid");
    assert_eq!(u64::from(policy.max_ticks_per_supporter_period), CAP);
    policy
}

/// A service over a fresh data directory, its admin, and the tick shapes to cycle through.
struct Fixture {
    svc: Arc<Service>,
    admin: Principal,
    supporters: Vec<Principal>,
    /// Ticks handed out so far; tick number `t` belongs to supporter `t / CAP`.
    handed_out: u64,
    unit: String,
    tag_sets: Vec<TagSet>,
}

impl Fixture {
    fn open(dir: &Path) -> Fixture {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::parse(NOW).expect("valid instant"));
        let (svc, _) =
            Service::open(dir, bench_policy(), clock, Some(ADMIN_TOKEN)).expect("service opens");
        let admin = svc.authenticate(Some(ADMIN_TOKEN)).expect("admin token");
        let policy = svc.policy();
        let unit = policy.org(ORG).expect("bench org in policy").units[0]
            .id
            .clone();
        // Sixteen tag sets: dimension d takes value (k * (d + 1)) mod its length, so every set
        // has one valid value per dimension and the ticks spread over several cells.
        let tag_sets = (0..16)
            .map(|k| {
                policy
                    .dimensions
                    .iter()
                    .enumerate()
                    .map(|(d, dim)| {
                        let v = &dim.values[(k * (d + 1)) % dim.values.len()];
                        (dim.id.clone(), v.id.clone())
                    })
                    .collect()
            })
            .collect();
        Fixture {
            svc: Arc::new(svc),
            admin,
            supporters: Vec::new(),
            handed_out: 0,
            unit,
            tag_sets,
        }
    }

    /// Reserves `n` ticks and returns the number of the first, creating supporter tokens until
    /// every reserved tick has one with allowance left. Not for timed sections: creating a
    /// token flushes.
    fn reserve(&mut self, n: u64) -> u64 {
        let first = self.handed_out;
        self.handed_out += n;
        let needed = self.handed_out.div_ceil(CAP) as usize;
        while self.supporters.len() < needed {
            let created = self
                .svc
                .create_token(
                    &self.admin,
                    NewTokenRequest {
                        role: "supporter".into(),
                        org: Some(ORG.into()),
                    },
                )
                .expect("create supporter token");
            let who = self
                .svc
                .authenticate(Some(&created.token))
                .expect("new supporter token authenticates");
            self.supporters.push(who);
        }
        first
    }

    /// The supporter that logs tick number `t`.
    fn who(&self, t: u64) -> &Principal {
        &self.supporters[(t / CAP) as usize]
    }

    /// The supporters for ticks `first..first + n`, owned, for tasks that outlive a borrow.
    fn whos(&self, first: u64, n: u64) -> Vec<Principal> {
        (first..first + n).map(|t| self.who(t).clone()).collect()
    }

    fn request(&self, t: u64) -> TickRequest {
        tick_request(&self.unit, &self.tag_sets[(t % 16) as usize])
    }
}

fn tick_request(unit: &str, tags: &TagSet) -> TickRequest {
    TickRequest {
        org: ORG.into(),
        unit: unit.into(),
        tags: tags.clone(),
        count: None,
        period: None,
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ingest(c: &mut Criterion) {
    start_watchdog();
    let rt = runtime();
    let mut group = c.benchmark_group("ingest");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // Building the request alone (cloning the tag set), to read the others against.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let fx = Fixture::open(dir.path());
        group.throughput(Throughput::Elements(1));
        group.bench_function("build_request", |b| {
            let mut t = 0u64;
            b.iter(|| {
                t += 1;
                fx.request(t)
            });
            progress();
        });
    }

    // (a) Validation and the sled transaction, without waiting for the disk.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fx = Fixture::open(dir.path());
        group.throughput(Throughput::Elements(1));
        group.bench_function("in_memory", |b| {
            b.iter_custom(|iters| {
                let first = fx.reserve(iters);
                let mut timed = Duration::ZERO;
                let mut t = first;
                while t < first + iters {
                    let end = (t + IN_MEMORY_CHUNK).min(first + iters);
                    let start = Instant::now();
                    for t in t..end {
                        let write = fx
                            .svc
                            .check_tick(fx.who(t), fx.request(t))
                            .expect("tick is valid");
                        fx.svc.store().apply_tick(&write).expect("tick applies");
                    }
                    timed += start.elapsed();
                    // Untimed: see IN_MEMORY_CHUNK.
                    fx.svc.store().flush().expect("flush");
                    t = end;
                }
                progress();
                timed
            })
        });
    }

    // (b) The full durable path, one tick at a time: one flush per tick.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fx = Fixture::open(dir.path());
        group.throughput(Throughput::Elements(1));
        group.bench_function("durable_serial", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let first = fx.reserve(iters);
                let whos = fx.whos(first, iters);
                let reqs: Vec<TickRequest> =
                    (first..first + iters).map(|t| fx.request(t)).collect();
                let svc = fx.svc.clone();
                async move {
                    let start = Instant::now();
                    for (who, req) in whos.iter().zip(reqs) {
                        svc.log_tick(who, req).await.expect("tick accepted");
                    }
                    let elapsed = start.elapsed();
                    progress();
                    elapsed
                }
            })
        });
    }

    // (c) 32 durable ticks in flight at once; criterion reports the time per tick.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fx = Fixture::open(dir.path());
        group.throughput(Throughput::Elements(CONCURRENCY as u64));
        group.bench_function("durable_concurrent_32", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let n = iters * CONCURRENCY as u64;
                let first = fx.reserve(n);
                let whos = fx.whos(first, n);
                let reqs: Vec<TickRequest> = (first..first + n).map(|t| fx.request(t)).collect();
                let svc = fx.svc.clone();
                async move {
                    let mut work = whos.into_iter().zip(reqs);
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut set = JoinSet::new();
                        for (who, req) in work.by_ref().take(CONCURRENCY) {
                            let svc = svc.clone();
                            set.spawn(async move { svc.log_tick(&who, req).await });
                        }
                        while let Some(done) = set.join_next().await {
                            done.expect("task ran").expect("tick accepted");
                        }
                    }
                    let elapsed = start.elapsed();
                    progress();
                    elapsed
                }
            })
        });
    }

    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
