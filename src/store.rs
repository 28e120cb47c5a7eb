//! Storage: the only module that imports `sled`. Key layout, transactions and durability.
//!
//! # Layout
//!
//! Raw data (counter cells, supporter counters, the pseudonym secret) of each base period lives
//! in a sled database of its own under `raw/PERIOD/`, so that purging a period deletes its files
//! outright: a log-structured store would otherwise keep deleted bytes in old segments. All
//! else lives in the main database under `db/`. Every key is built from policy ids, period names
//! and random or keyed bytes; nothing a person typed and no time finer than the period is
//! ever written.
//!
//! | database / tree | key | value |
//! | --- | --- | --- |
//! | `raw/P` `cells` | `PERIOD/ORG/UNIT/dim=value;dim=value…` (dimensions in id order) | count, u64 big-endian |
//! | `raw/P` `load` | `PERIOD/ORG/` + 32-byte pseudonym | contacts this period, u32 big-endian |
//! | `raw/P` default | `secret`; `closed` | 32 random bytes (pseudonym key); present once closed |
//! | `db` `meta` | `server_key`, `signing_key`, `first_period`, `schema` | key bytes; PKCS#8; period; `1` |
//! | `db` `periods` | `PERIOD` | state name (`closed`, `released`, `purged`); open periods have none |
//! | `db` `tokens` | HMAC of the token under the server key (32 bytes) | token record, JSON |
//! | `db` `token_ids` | token id | the token's HMAC (32 bytes) |
//! | `db` `releases` | release id `PERIOD/ORG/MARGINAL` | the release, JSON (noisy values only) |
//! | `db` `ledger` | release id | the privacy spend of that release, JSON |
//! | `db` `staged` | release id | a release written with its ledger entry, durable, not yet readable |
//! | `raw/P` `idem` | HMAC of token id and `Idempotency-Key` under the period secret (cleared when P closes) | contacts the request logged, u32 |
//! | `regimes.json` (a file) | | the policy texts and the first period each governs (see `regime`) |
//!
//! # Releases are durable before they are readable
//!
//! A batch of releases is written with its ledger entries to `staged` in one transaction and
//! synced; only then is it moved to `releases` (and synced again). A crash before the first sync
//! loses a draw nobody saw; a crash after it finds the batch in `staged` at the next open and
//! publishes exactly those bytes. So what a reader was ever served is what is stored, and each
//! release is drawn once.
//!
//! # A full disk
//!
//! Before each write the store checks the free space of the data directory's file system and
//! refuses the write ([`StoreError::Full`]) when less than [`RESERVE_BYTES`] is free, so sled
//! never meets a full disk mid-write (after which it refuses every write until reopened). Reads
//! go on; the first write after space returns succeeds, and [`Store::writable`] says which state
//! the store is in, for `/readyz`.
//! | `db` `releases_by_org` | `ORG/START/PERIOD/MARGINAL` (START: the period's first day, `YYYY-MM-DD`) | release id |
//! | `db` `releases_by_time` | `START/PERIOD/ORG/MARGINAL` | release id |
//!
//! The two `releases_by_*` trees index `releases` (the source of truth) so that a read finds
//! one organisation's releases of a period range, or every organisation's, with one range scan
//! of short keys and decodes only the releases it serves. They are written in the same
//! transaction as their release, and rebuilt at open for data directories written before they
//! existed (`meta` key `release_index`).
//!
//! # Durability
//!
//! A tick is applied in one sled transaction over the period database's `cells`, `load` and
//! default trees (the `closed` flag is read inside it, so a tick cannot slip past a concurrent
//! close), then the caller awaits [`Store::durable_period`], which returns only after a sync of
//! that database that started after the write: sled's `flush`, then an `fdatasync` of its log
//! file (on Linux sled 0.34 ends a flush with `sync_file_range`, which survives a process crash
//! but not a power loss). One background thread runs the syncs and lets every waiter that
//! queued before a sync started share it (group commit). Syncing after every tick also keeps
//! sled's unflushed log short, away from a known sled 0.34 stall under very long unflushed
//! write bursts (see benches/README.md).
//!
//! # Backups
//!
//! [`Store::snapshot`] copies every tree, byte for byte, while holding a gate that each write
//! spanning trees (a tick, a token, a release batch, a period state, a purge) takes shared, so
//! the copy never holds half of one; [`write_snapshot`] writes such a copy into a new data
//! directory. The format of a backup on disk is `backup`'s.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::{CellKey, LedgerEntry, Period, PeriodState, Release, TokenRecord};

/// The `meta` key whose presence says both release indexes are complete.
const RELEASE_INDEX_KEY: &str = "release_index";

/// Storage failures and the rejections decided inside a transaction.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation outside sled failed (creating or deleting a period's directory).
    #[error("storage failure: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A fresh secret could not be drawn.
    #[error("could not draw a secret: {0}")]
    Secret(String),
    /// The disk holding the data directory has less free space than the store keeps in
    /// reserve; nothing was written.
    #[error(
        "the disk holding the data directory is full ({available_mib} MiB free, {reserve_mib} MiB kept in reserve); nothing was written"
    )]
    Full {
        available_mib: u64,
        reserve_mib: u64,
    },
    /// A write reached the disk and failed there (an I/O error, not a full disk); what was
    /// written since the last durable point may or may not be on disk.
    #[error("the data directory could not be written: {0}")]
    WriteFailed(String),
    /// The flush thread is gone (the store is shutting down).
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The tick would take the supporter over the period cap; `used` is what they had logged.
    #[error("over the per-supporter cap of {cap}")]
    OverCap { used: u32, cap: u32 },
    /// A release with this id exists already (releases are drawn once).
    #[error("release {0} exists already")]
    AlreadyReleased(String),
    /// The period no longer accepts ticks.
    #[error("period is {}", .0.as_str())]
    PeriodNotOpen(PeriodState),
    /// A position to resume a release listing from is not one of that listing's.
    #[error("the cursor does not belong to this listing")]
    CursorOutOfRange,
}

/// A flush request: which database (a period's raw one, or the main one), its handle, and who
/// to tell.
type Waiter = (
    Option<Period>,
    Handle,
    oneshot::Sender<Result<(), SyncFailure>>,
);

/// Why a sync failed: in sled (which then refuses every write until the database is reopened),
/// or in our `fdatasync` (which may pass the next time).
#[derive(Debug, Clone)]
enum SyncFailure {
    Sled(String),
    Io(String),
}

/// A sled database and its log file kept open, so a flush can be made truly durable without
/// opening a file (which could fail when the process is out of descriptors).
#[derive(Clone)]
struct Handle {
    db: sled::Db,
    log: Arc<File>,
}

/// How long [`open_retrying`] waits for another handle's file lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `config.open()`, tried again while sled reports its file lock taken, for up to
/// [`LOCK_WAIT`]. A database closed by [`Store::close_raw`] is reopened by the next job or
/// backup; sled 0.34 can keep the lock for a moment after its last handle is dropped (its
/// maintainers: "do not rapidly open and close"), and that moment must not fail a release.
/// A lock that stays taken (a second server on the same directory) is still an error.
fn open_retrying(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

impl Handle {
    fn open(dir: PathBuf, cache_bytes: Option<u64>) -> Result<Handle, StoreError> {
        let mut config = sled::Config::new()
            .path(&dir)
            // Flushing is ours (after each write that must be durable); sled's timer would only
            // add I/O.
            .flush_every_ms(None);
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        let db = open_retrying(&config)?;
        // The directory entries of a new database must survive a power loss too.
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        let log = Arc::new(File::open(dir.join("db"))?);
        Ok(Handle { db, log })
    }

    /// Flushes sled's buffers, then `fdatasync`s its log file. On Linux sled 0.34 ends a flush
    /// with `sync_file_range`, which flushes neither the drive's write cache nor the file's new
    /// length; the extra `fdatasync` (one per group commit) does both.
    fn sync(&self) -> Result<(), StoreError> {
        self.sync_parts().map_err(|e| match e {
            SyncFailure::Sled(m) | SyncFailure::Io(m) => StoreError::WriteFailed(m),
        })
    }

    /// [`Handle::sync`], telling a failure of sled from one of the `fdatasync`.
    fn sync_parts(&self) -> Result<(), SyncFailure> {
        self.db
            .flush()
            .map_err(|e| SyncFailure::Sled(e.to_string()))?;
        self.log
            .sync_data()
            .map_err(|e| SyncFailure::Io(e.to_string()))?;
        Ok(())
    }
}

/// An open raw database of one period, with its trees.
#[derive(Clone)]
struct PeriodDb {
    handle: Handle,
    cells: sled::Tree,
    load: sled::Tree,
    idem: sled::Tree,
}

/// Cache of each period database; raw data is small (a few thousand cells a period).
const PERIOD_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Cache of the main database (releases, ledger, tokens, sessions): 64 MiB, instead of sled's
/// default of 1 GiB, so resident memory stays bounded while researchers page through years of
/// releases (the national read bench peaks at 58 MB in all).
const MAIN_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The data directory: the main database and the raw databases of each period.
#[derive(Clone)]
pub struct Store {
    raw_dir: PathBuf,
    main: Handle,
    meta: sled::Tree,
    periods: sled::Tree,
    tokens: sled::Tree,
    token_ids: sled::Tree,
    releases: sled::Tree,
    ledger: sled::Tree,
    /// Batches of releases written durably but not yet readable.
    staged: sled::Tree,
    /// Index of `releases` by organisation, then period start (see the module doc).
    releases_by_org: sled::Tree,
    /// Index of `releases` by period start, then organisation.
    releases_by_time: sled::Tree,
    /// Open period databases; a period's is opened on first use and closed by the lifecycle
    /// job once the period takes no more ticks ([`Store::close_raw`]) or when it is purged.
    raw: Arc<Mutex<BTreeMap<Period, PeriodDb>>>,
    flusher: mpsc::Sender<Waiter>,
    /// Whether writes are possible: `Full` while the disk is short of the reserve; `Failed` after
    /// an I/O error, which sled does not recover from without a restart.
    health: Arc<Health>,
    /// Taken shared by every write that spans trees (a tick, a token, a release batch, a period
    /// state, a purge) and exclusively by [`Store::snapshot`], so a backup never holds half of
    /// one: sled iterates a tree live, not as of one instant.
    snapshot_gate: Arc<std::sync::RwLock<()>>,
}

/// Free bytes the store keeps in reserve on the data directory's file system: below it, writes
/// are refused before they start. 32 MiB is many times what any single write needs (sled's log
/// grows by segments of 512 KiB) and little for a server's disk.
pub const RESERVE_BYTES: u64 = 32 * 1024 * 1024;

/// The write health of a store, shared by its clones.
#[derive(Debug, Default)]
struct Health {
    /// The disk was short of the reserve at the last check.
    full: std::sync::atomic::AtomicBool,
    /// A write failed with an I/O error; sled refuses writes from then on.
    failed: Mutex<Option<String>>,
    /// Syncs still to fail on purpose (fault injection for tests; see
    /// [`Store::fail_next_syncs`]).
    failing_syncs: std::sync::atomic::AtomicU32,
}

/// Whether the store can write, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writable {
    /// Writes go through.
    Yes,
    /// The disk is full; writes are refused until space returns (no restart needed).
    DiskFull,
    /// A write failed; writes are refused until the service is restarted.
    Failed(String),
}

/// One tick's write, prepared by the service.
#[derive(Debug)]
pub struct TickWrite {
    /// The base period.
    pub period: Period,
    /// The counter cell to increment.
    pub cell: CellKey,
    /// The supporter's pseudonym in this period.
    pub pseudonym: [u8; 32],
    /// Contacts this request logs.
    pub count: u32,
    /// The per-supporter cap for the period.
    pub cap: u32,
    /// The keyed hash of the supporter's `Idempotency-Key`, if the request had one.
    pub idempotency: Option<[u8; 32]>,
}

/// What applying a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickApplied {
    /// The contacts were counted now.
    Counted,
    /// A request with the same idempotency key was counted before, with this many contacts;
    /// nothing changed.
    Replayed(u32),
}

impl Store {
    /// Opens (or creates) the data directory `dir` and starts the flush thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        // The data directory itself may be a symlink (to an encrypted volume): follow it once.
        restrict(&std::fs::canonicalize(dir)?)?;
        let main = Handle::open(dir.join("db"), Some(MAIN_CACHE_BYTES))?;
        let db = &main.db;
        let raw_dir = dir.join("raw");
        std::fs::create_dir_all(&raw_dir)?;
        let (tx, rx) = mpsc::channel::<Waiter>();
        thread::Builder::new()
            .name("tellestrek-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    // One flush per database touched, shared by every waiter of this round.
                    let mut done: BTreeMap<Option<Period>, Result<(), SyncFailure>> =
                        BTreeMap::new();
                    for (which, handle, tell) in waiters {
                        let result = done
                            .entry(which)
                            .or_insert_with(|| handle.sync_parts())
                            .clone();
                        let _ = tell.send(result);
                    }
                }
            })?;
        let store = Store {
            raw_dir,
            meta: db.open_tree("meta")?,
            periods: db.open_tree("periods")?,
            tokens: db.open_tree("tokens")?,
            token_ids: db.open_tree("token_ids")?,
            releases: db.open_tree("releases")?,
            ledger: db.open_tree("ledger")?,
            staged: db.open_tree("staged")?,
            releases_by_org: db.open_tree("releases_by_org")?,
            releases_by_time: db.open_tree("releases_by_time")?,
            main: main.clone(),
            raw: Arc::new(Mutex::new(BTreeMap::new())),
            flusher: tx,
            health: Arc::new(Health::default()),
            snapshot_gate: Arc::default(),
        };
        if store.meta.get("schema")?.as_deref() != Some(b"3") {
            store.meta.insert("schema", "3")?;
        }
        // A batch staged before a crash is published now, exactly as it was drawn.
        store.publish_staged()?;
        store.build_release_index()?;
        Ok(store)
    }

    fn raw_path(&self, period: Period) -> PathBuf {
        self.raw_dir.join(period.to_string())
    }

    /// The raw database of `period`; `None` if it has none and `create` is false.
    fn period_db(&self, period: Period, create: bool) -> Result<Option<PeriodDb>, StoreError> {
        let mut open = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = open.get(&period) {
            return Ok(Some(db.clone()));
        }
        let path = self.raw_path(period);
        if !path.exists() {
            if !create {
                return Ok(None);
            }
            // A new database is a write: not on a full disk.
            self.guard()?;
        }
        let handle = Handle::open(path, Some(PERIOD_CACHE_BYTES))?;
        let db = PeriodDb {
            cells: handle.db.open_tree("cells")?,
            load: handle.db.open_tree("load")?,
            idem: handle.db.open_tree("idem")?,
            handle,
        };
        open.insert(period, db.clone());
        Ok(Some(db))
    }

    /// Waits until everything written to `period`'s raw data before this call is on disk.
    /// Concurrent callers share one flush.
    pub async fn durable_period(&self, period: Period) -> Result<(), StoreError> {
        match self.period_db(period, false)? {
            Some(db) => self.durable_db(Some(period), db.handle).await,
            // Purged between the write and now: the write is gone, so it must not be
            // acknowledged.
            None => Err(StoreError::Corrupt(format!(
                "the raw data of {period} was deleted before the write was durable"
            ))),
        }
    }

    /// Waits until everything written to the main database before this call is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.durable_db(None, self.main.clone()).await
    }

    async fn durable_db(&self, which: Option<Period>, handle: Handle) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .health
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::WriteFailed("injected sync failure".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.flusher
            .send((which, handle, tx))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await
            .map_err(|_| StoreError::ShuttingDown)?
            .map_err(|e| match e {
                // sled refuses every write from now on: latched until a restart.
                SyncFailure::Sled(m) => self.failed(m),
                // Ours may pass the next time (descriptors, a transient error): not latched.
                SyncFailure::Io(m) => StoreError::WriteFailed(m),
            })
    }

    /// Records a failed write (sled refuses writes after one until reopened) and returns it.
    fn failed(&self, detail: String) -> StoreError {
        let mut f = self.health.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(error = %detail, "a write to the data directory failed; writes are refused until the service is restarted");
            *f = Some(detail.clone());
        }
        StoreError::WriteFailed(detail)
    }

    /// Fault injection for tests: the next `n` waits for durability fail as a failed
    /// `fdatasync` would (after the write was applied in memory). Nothing calls it in service.
    pub fn fail_next_syncs(&self, n: u32) {
        self.health
            .failing_syncs
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses a write before it starts if the store cannot take it: a failed store, or a disk
    /// with less than [`RESERVE_BYTES`] free. Logs each change of state once, never per request.
    pub fn guard(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if let Some(e) = self
            .health
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(StoreError::WriteFailed(e));
        }
        let available = fs2::available_space(&self.raw_dir)?;
        let full = available < RESERVE_BYTES;
        let was = self.health.full.swap(full, Ordering::SeqCst);
        if full {
            if !was {
                tracing::warn!(
                    available_mib = available / (1024 * 1024),
                    "the disk holding the data directory is full; writes answer 503 until space returns"
                );
            }
            return Err(StoreError::Full {
                available_mib: available / (1024 * 1024),
                reserve_mib: RESERVE_BYTES / (1024 * 1024),
            });
        }
        if was {
            tracing::info!("the disk holding the data directory has room again; writes resume");
        }
        Ok(())
    }

    /// Whether the store can write now (checks the disk).
    pub fn writable(&self) -> Writable {
        match self.guard() {
            Ok(()) => Writable::Yes,
            Err(StoreError::Full { .. }) => Writable::DiskFull,
            Err(e) => Writable::Failed(e.to_string()),
        }
    }

    /// Syncs the main database (tokens, states, releases) synchronously.
    pub fn sync_main(&self) -> Result<(), StoreError> {
        self.main.sync_parts().map_err(|e| match e {
            SyncFailure::Sled(m) => self.failed(m),
            SyncFailure::Io(m) => StoreError::WriteFailed(m),
        })
    }

    /// Flushes every open database synchronously (shutdown, the lifecycle job).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.main.sync()?;
        let open: Vec<PeriodDb> = self
            .raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for db in open {
            db.handle.sync()?;
        }
        Ok(())
    }

    /// Returns the value of meta key `name`, creating it with `make` if absent. Safe under
    /// concurrent first starts: the first writer wins and everyone gets its value.
    pub fn meta_get_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<(Vec<u8>, bool), StoreError> {
        get_or_create(&self.meta, name, make).and_then(|(v, created)| {
            if created {
                self.main.sync()?;
            }
            Ok((v, created))
        })
    }

    /// The pseudonym secret of `period`, drawn on first use.
    pub fn period_secret(
        &self,
        period: Period,
        make: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let db = self
            .period_db(period, true)?
            .ok_or_else(|| StoreError::Corrupt(format!("no raw database for {period}")))?;
        get_or_create(&db.handle.db, "secret", make).map(|(v, _)| v)
    }

    /// Applies a tick atomically: answers a replay if its idempotency key was counted before,
    /// refuses it if the period is closed or the supporter would pass the cap, else increments
    /// the cell and the supporter's counter and records the key. Not yet durable: await
    /// [`Store::durable_period`] before acknowledging, and call [`Store::undo_tick`] if that
    /// fails.
    pub fn apply_tick(&self, w: &TickWrite) -> Result<TickApplied, StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.guard()?;
        let db = self
            .period_db(w.period, true)?
            .ok_or_else(|| StoreError::Corrupt(format!("no raw database for {}", w.period)))?;
        let (cells, load, idem) = (&db.cells, &db.load, &db.idem);
        let flags: &sled::Tree = &db.handle.db;
        let cell_key = encode_cell(&w.cell);
        let load_key = load_key(w.period, &w.cell.org, &w.pseudonym);
        (cells, load, idem, flags)
            .transaction(|(cells, load, idem, flags)| {
                if let Some(key) = &w.idempotency
                    && let Some(first) = idem.get(key)?
                {
                    return Ok(TickApplied::Replayed(be_u32(&first)));
                }
                if flags.get(b"closed")?.is_some() {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::PeriodNotOpen(PeriodState::Closed),
                    ));
                }
                let used = load.get(&load_key)?.map(|v| be_u32(&v)).unwrap_or(0);
                if u64::from(used) + u64::from(w.count) > u64::from(w.cap) {
                    return Err(ConflictableTransactionError::Abort(StoreError::OverCap {
                        used,
                        cap: w.cap,
                    }));
                }
                let cell = cells.get(&cell_key)?.map(|v| be_u64(&v)).unwrap_or(0);
                cells.insert(
                    cell_key.as_slice(),
                    &(cell + u64::from(w.count)).to_be_bytes(),
                )?;
                load.insert(load_key.as_slice(), &(used + w.count).to_be_bytes())?;
                if let Some(key) = &w.idempotency {
                    idem.insert(&key[..], &w.count.to_be_bytes())?;
                }
                Ok(TickApplied::Counted)
            })
            .map_err(tx_err)
    }

    /// The contacts counted in `period` under idempotency key hash `key`, if any.
    pub fn idempotent_answer(
        &self,
        period: Period,
        key: &[u8; 32],
    ) -> Result<Option<u32>, StoreError> {
        let Some(db) = self.period_db(period, false)? else {
            return Ok(None);
        };
        Ok(db.idem.get(key)?.map(|v| be_u32(&v)))
    }

    /// Takes back a tick that [`Store::apply_tick`] counted but that could not be made durable,
    /// so that an error answer means "not counted" once the store writes again.
    pub fn undo_tick(&self, w: &TickWrite) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = self.period_db(w.period, false)? else {
            return Ok(());
        };
        let (cells, load, idem) = (&db.cells, &db.load, &db.idem);
        let cell_key = encode_cell(&w.cell);
        let load_key = load_key(w.period, &w.cell.org, &w.pseudonym);
        (cells, load, idem)
            .transaction(|(cells, load, idem)| {
                let cell = cells.get(&cell_key)?.map(|v| be_u64(&v)).unwrap_or(0);
                match cell.saturating_sub(u64::from(w.count)) {
                    0 => cells.remove(cell_key.as_slice())?,
                    n => cells.insert(cell_key.as_slice(), &n.to_be_bytes())?,
                };
                let used = load.get(&load_key)?.map(|v| be_u32(&v)).unwrap_or(0);
                match used.saturating_sub(w.count) {
                    0 => load.remove(load_key.as_slice())?,
                    n => load.insert(load_key.as_slice(), &n.to_be_bytes())?,
                };
                if let Some(key) = &w.idempotency {
                    idem.remove(&key[..])?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)
    }

    /// Every raw cell of `period`. For the release job (and tests) only: raw counts never leave
    /// the process except as noisy releases.
    pub fn cells_of(&self, period: Period) -> Result<Vec<(CellKey, u64)>, StoreError> {
        let Some(db) = self.period_db(period, false)? else {
            return Ok(Vec::new());
        };
        db.cells
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((decode_cell(period, &k)?, be_u64(&v)))
            })
            .collect()
    }

    /// Every supporter's contact count in `period` for `org`, as a list without pseudonyms.
    /// For the release job's load indicator only.
    pub fn supporter_counts(&self, period: Period, org: &str) -> Result<Vec<u32>, StoreError> {
        let Some(db) = self.period_db(period, false)? else {
            return Ok(Vec::new());
        };
        let prefix = format!("{period}/{org}/");
        db.load
            .scan_prefix(prefix.as_bytes())
            .values()
            .map(|v| Ok(be_u32(&v?)))
            .collect()
    }

    /// Every byte of the counting data (raw databases, period states, tokens), for tests that
    /// prove a rejected request changed nothing.
    pub fn raw_snapshot(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        let mut put = |prefix: String, tree: &sled::Tree| -> Result<(), StoreError> {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let mut key = prefix.clone().into_bytes();
                key.extend_from_slice(&k);
                out.insert(key, v.to_vec());
            }
            Ok(())
        };
        put("periods:".into(), &self.periods)?;
        put("tokens:".into(), &self.tokens)?;
        for period in self.raw_periods()? {
            if let Some(db) = self.period_db(period, false)? {
                put(format!("{period}:flags:"), &db.handle.db)?;
                put(format!("{period}:cells:"), &db.cells)?;
                put(format!("{period}:load:"), &db.load)?;
            }
        }
        Ok(out)
    }

    /// Base periods that have raw data on disk.
    pub fn raw_periods(&self) -> Result<Vec<Period>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.raw_dir)? {
            if let Some(p) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Period>().ok())
            {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The recorded state of `period` (none while open).
    pub fn period_state(&self, period: Period) -> Result<Option<PeriodState>, StoreError> {
        Ok(self
            .periods
            .get(period.to_string())?
            .and_then(|v| decode_state(&v)))
    }

    /// Records a state for `period`. Closing also sets the flag in its raw database, inside
    /// which ticks check it, so no tick lands after the close.
    pub fn set_period_state(&self, period: Period, state: PeriodState) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.guard()?;
        // Created if need be, so that a tick that passed the clock check just before the close
        // still meets the flag inside its transaction.
        if let Some(db) = self
            .period_db(period, state == PeriodState::Closed)?
            .filter(|_| state != PeriodState::Open)
        {
            db.handle.db.insert("closed", &[1u8])?;
            // A closed period takes no tick, so its idempotency records answer nothing any
            // more: they go now rather than at the purge. This keeps them (and the memory sled
            // holds for them, about 130 bytes each) to the periods that still take ticks.
            db.idem.clear()?;
            db.handle.sync()?;
        }
        self.periods.insert(period.to_string(), state.as_str())?;
        Ok(())
    }

    /// Stores a new token record under its hash.
    pub fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.guard()?;
        let json = encode(record)?;
        (&self.tokens, &self.token_ids)
            .transaction(|(tokens, ids)| {
                tokens.insert(&hash[..], json.as_slice())?;
                ids.insert(record.id.as_bytes(), &hash[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)
    }

    /// The token record stored under `hash`.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(hash)?
            .map(|v| decode(&v, "token record"))
            .transpose()
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens
            .iter()
            .values()
            .map(|v| decode(&v?, "token record"))
            .collect()
    }

    /// The token record with public id `id`.
    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.token_ids.get(id)? {
            Some(hash) => self
                .tokens
                .get(hash)?
                .map(|v| decode(&v, "token record"))
                .transpose(),
            None => Ok(None),
        }
    }

    /// Deletes the token with public id `id`, and with it the name its account was given at
    /// invite and any open follow-up request, in one transaction; returns whether it existed.
    pub fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.guard()?;
        let (names, followups) = (self.web_tree(ACCOUNT_NAMES)?, self.web_tree(FOLLOWUPS)?);
        (&self.tokens, &self.token_ids, &names, &followups)
            .transaction(|(tokens, ids, names, followups)| {
                let Some(hash) = ids.remove(id.as_bytes())? else {
                    return Ok(false);
                };
                tokens.remove(hash)?;
                names.remove(id.as_bytes())?;
                followups.remove(id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(tx_err)
    }

    /// Writes releases and their ledger entries, refusing the whole batch if any of its
    /// releases exists already (releases are never overwritten): first to `staged` with the
    /// ledger entries in one transaction, synced; then published to `releases`, synced. Nobody
    /// can read a release before it is on disk.
    pub fn commit_releases(&self, batch: &[(Release, LedgerEntry)]) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.guard()?;
        let encoded: Vec<(String, Vec<u8>, Vec<u8>)> = batch
            .iter()
            .map(|(r, l)| Ok((r.id.clone(), encode(r)?, encode(l)?)))
            .collect::<Result<_, StoreError>>()?;
        (&self.releases, &self.staged, &self.ledger)
            .transaction(|(releases, staged, ledger)| {
                for (id, r, l) in &encoded {
                    if releases.get(id.as_bytes())?.is_some()
                        || staged.get(id.as_bytes())?.is_some()
                    {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::AlreadyReleased(id.clone()),
                        ));
                    }
                    staged.insert(id.as_bytes(), r.as_slice())?;
                    ledger.insert(id.as_bytes(), l.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        self.sync_main()?;
        crate::fault::point("release:staged");
        self.publish_staged()?;
        crate::fault::point("release:published");
        Ok(())
    }

    /// Moves every staged release to `releases` in one transaction and syncs: what was staged is
    /// on disk already, so readers see only durable releases, with the bytes that were drawn.
    fn publish_staged(&self) -> Result<(), StoreError> {
        // Transactional trees cannot be iterated (and reading a tree inside a transaction on
        // it would wait on the transaction), so the ids are read first; nothing else stages
        // meanwhile (the lifecycle job holds the release lock).
        let ids: Vec<sled::IVec> = self.staged.iter().keys().collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(());
        }
        // The index entries become visible with their releases, in the same transaction.
        let index: Vec<(Vec<u8>, Vec<u8>)> = ids
            .iter()
            .map(|id| index_keys(&String::from_utf8_lossy(id)))
            .collect::<Result<_, StoreError>>()?;
        let trees = (
            &self.releases,
            &self.staged,
            &self.releases_by_org,
            &self.releases_by_time,
        );
        trees
            .transaction(|(releases, staged, by_org, by_time)| {
                for (id, (org_key, time_key)) in ids.iter().zip(&index) {
                    if let Some(r) = staged.remove(id)? {
                        releases.insert(id, r)?;
                        by_org.insert(org_key.as_slice(), id)?;
                        by_time.insert(time_key.as_slice(), id)?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        self.sync_main()?;
        Ok(())
    }

    /// The release with this id.
    pub fn release(&self, id: &str) -> Result<Option<Release>, StoreError> {
        self.releases
            .get(id)?
            .map(|v| decode(&v, "release"))
            .transpose()
    }

    /// Every release whose id starts with `prefix` (a period, or `PERIOD/ORG/`), in id order.
    pub fn releases(&self, prefix: &str) -> Result<Vec<Release>, StoreError> {
        self.releases
            .scan_prefix(prefix)
            .values()
            .map(|v| decode(&v?, "release"))
            .collect()
    }

    /// The stored JSON of the release with this id (as written; not canonical).
    pub fn release_bytes(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.releases.get(id)?.map(|v| v.to_vec()))
    }

    /// Walks the release index over `scan`, in index order, starting after the index key
    /// `after` (a cursor handed out earlier). Only keys are read: the caller decodes the
    /// releases it keeps. Refuses an `after` that is not a key of this scan.
    pub fn release_index(
        &self,
        scan: &ReleaseScan<'_>,
        after: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<IndexedRelease, StoreError>> + use<>, StoreError> {
        use std::ops::Bound;
        let (tree, lo, hi) = self.scan_bounds(scan);
        let start = match after {
            Some(a) if a >= lo.as_slice() && hi.as_ref().is_none_or(|h| a < h.as_slice()) => {
                Bound::Excluded(a.to_vec())
            }
            Some(_) => return Err(StoreError::CursorOutOfRange),
            None => Bound::Included(lo),
        };
        let end = match hi {
            Some(h) => Bound::Excluded(h),
            None => Bound::Unbounded,
        };
        Ok(tree.range::<Vec<u8>, _>((start, end)).map(|kv| {
            let (k, v) = kv?;
            Ok(IndexedRelease {
                key: k.to_vec(),
                id: String::from_utf8(v.to_vec())
                    .map_err(|_| StoreError::Corrupt("release index value".into()))?,
            })
        }))
    }

    /// The index tree and key range of a scan (`hi` excluded; `None`: to the end).
    fn scan_bounds(&self, scan: &ReleaseScan<'_>) -> (sled::Tree, Vec<u8>, Option<Vec<u8>>) {
        let day = |d: time::Date| d.to_string();
        match scan.org {
            Some(org) => {
                let lo = format!("{org}/{}", scan.starts_from.map(day).unwrap_or_default());
                let hi = match scan.starts_before {
                    Some(d) => format!("{org}/{}", day(d)),
                    // '0' is the byte after '/': the end of this organisation's keys.
                    None => format!("{org}0"),
                };
                (
                    self.releases_by_org.clone(),
                    lo.into_bytes(),
                    Some(hi.into_bytes()),
                )
            }
            None => (
                self.releases_by_time.clone(),
                scan.starts_from.map(day).unwrap_or_default().into_bytes(),
                scan.starts_before.map(|d| day(d).into_bytes()),
            ),
        }
    }

    /// Writes any missing index entry of `releases` (data directories written before the
    /// index existed), once: afterwards every release gets its entries in its own transaction.
    fn build_release_index(&self) -> Result<(), StoreError> {
        if self.meta.get(RELEASE_INDEX_KEY)?.is_some() {
            return Ok(());
        }
        let mut by_org = sled::Batch::default();
        let mut by_time = sled::Batch::default();
        let mut n = 0usize;
        for k in self.releases.iter().keys() {
            let k = k?;
            let id =
                std::str::from_utf8(&k).map_err(|_| StoreError::Corrupt("release id".into()))?;
            let (org_key, time_key) = index_keys(id)?;
            by_org.insert(org_key, id.as_bytes());
            by_time.insert(time_key, id.as_bytes());
            n += 1;
        }
        if n > 0 {
            self.releases_by_org.apply_batch(by_org)?;
            self.releases_by_time.apply_batch(by_time)?;
        }
        self.meta.insert(RELEASE_INDEX_KEY, "1")?;
        self.main.sync()?;
        Ok(())
    }

    /// Every ledger entry.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger
            .iter()
            .values()
            .map(|v| decode(&v?, "ledger entry"))
            .collect()
    }

    /// Deletes a base period's raw database (cells, supporter counters, pseudonym secret) from
    /// disk, and records the period as purged. Releases are kept.
    pub fn purge(&self, period: Period) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.take_raw(period)?;
        let path = self.raw_path(period);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
            File::open(&self.raw_dir)?.sync_all()?;
        }
        crate::fault::point("purge:deleted");
        self.periods
            .insert(period.to_string(), PeriodState::Purged.as_str())?;
        self.main.sync()?;
        Ok(())
    }

    /// Closes the raw database of `period` if it is open, after flushing it; the next use opens
    /// it again. sled holds about a database's size on disk in memory while it is open, so a
    /// period that takes no more ticks is closed between the jobs that read it (its releases,
    /// a quarter's, a year's, a backup with raw data) rather than kept open until its purge.
    /// Never for a period that may still take a tick: a write in flight on the closed handle
    /// would not be the one the next flush makes durable.
    pub fn close_raw(&self, period: Period) -> Result<(), StoreError> {
        let _gate = self.snapshot_gate.read().unwrap_or_else(|p| p.into_inner());
        self.take_raw(period)
    }

    /// Removes `period`'s database from the open ones and flushes it; it closes when this
    /// last handle drops. The caller holds the snapshot gate.
    fn take_raw(&self, period: Period) -> Result<(), StoreError> {
        let db = self
            .raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&period);
        if let Some(db) = db {
            db.handle.db.flush()?;
        }
        Ok(())
    }

    /// The periods whose raw database is open now.
    pub fn open_raw_periods(&self) -> Vec<Period> {
        self.raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// A value in `meta`, as stored.
    pub fn meta_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }

    /// A small text value in `meta` (the first period the service collected, for instance).
    pub fn meta_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(name)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets a small text value in `meta`.
    pub fn set_meta_text(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.guard()?;
        self.meta.insert(name, value.as_bytes())?;
        self.main.sync()?;
        Ok(())
    }
}

/// The regime list's file in the data directory: plain JSON, so that `policy check --against`
/// can read it while the server holds the database open.
pub const REGIMES_FILE: &str = "regimes.json";

/// The stored regime list of data directory `dir`, if it has one.
pub fn read_regimes(dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(dir.join(REGIMES_FILE)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the regime list of `dir` atomically and durably: a temporary file (created 0600)
/// is written and synced, renamed over the old one, and the directory synced, so a crash leaves
/// either the old list or the new one.
pub fn write_regimes(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(REGIMES_FILE))
        .map_err(|e| StoreError::Io(e.error))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Makes `dir` and everything in it readable by the service's user only (directories 0700,
/// files 0600): raw counts and keys are in there. The binary also sets its umask to 077, so
/// files created later are born that way.
fn restrict(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            restrict(&entry?.path())?;
        }
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Which part of the release index to walk: one organisation or all, and a range of period
/// start days.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseScan<'a> {
    /// Only this organisation's releases (the `releases_by_org` index); else every one's.
    pub org: Option<&'a str>,
    /// Releases whose period starts on or after this day.
    pub starts_from: Option<time::Date>,
    /// Releases whose period starts before this day.
    pub starts_before: Option<time::Date>,
}

/// One entry of the release index: its key (a position to resume after) and the release id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRelease {
    /// The index key, for a cursor.
    pub key: Vec<u8>,
    /// The release id, `PERIOD/ORG/MARGINAL`.
    pub id: String,
}

/// The `releases_by_org` and `releases_by_time` keys of a release id `PERIOD/ORG/MARGINAL`.
fn index_keys(id: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let bad = || StoreError::Corrupt(format!("release id {id}"));
    let mut parts = id.splitn(3, '/');
    let (period, org, marginal) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let start = period.parse::<Period>().map_err(|_| bad())?.start();
    Ok((
        format!("{org}/{start}/{period}/{marginal}").into_bytes(),
        format!("{start}/{period}/{org}/{marginal}").into_bytes(),
    ))
}

/// Get-or-create of one key, safe under concurrency (compare-and-swap).
fn get_or_create(
    tree: &sled::Tree,
    key: &str,
    make: impl FnOnce() -> Result<Vec<u8>, StoreError>,
) -> Result<(Vec<u8>, bool), StoreError> {
    if let Some(v) = tree.get(key)? {
        return Ok((v.to_vec(), false));
    }
    let fresh = make()?;
    match tree.compare_and_swap(key, None as Option<&[u8]>, Some(fresh.as_slice()))? {
        Ok(()) => Ok((fresh, true)),
        Err(cas) => cas
            .current
            .map(|v| (v.to_vec(), false))
            .ok_or_else(|| StoreError::Corrupt(format!("{key} vanished"))),
    }
}

fn decode_state(bytes: &[u8]) -> Option<PeriodState> {
    match bytes {
        b"open" => Some(PeriodState::Open),
        b"closed" => Some(PeriodState::Closed),
        b"released" => Some(PeriodState::Released),
        b"purged" => Some(PeriodState::Purged),
        _ => None,
    }
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[8 - n..].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

fn be_u32(v: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = v.len().min(4);
    b[4 - n..].copy_from_slice(&v[..n]);
    u32::from_be_bytes(b)
}

fn load_key(period: Period, org: &str, pseudonym: &[u8; 32]) -> Vec<u8> {
    let mut k = format!("{period}/{org}/").into_bytes();
    k.extend_from_slice(pseudonym);
    k
}

/// The `cells` key of a cell: `PERIOD/ORG/UNIT/dim=value;dim=value`.
pub fn encode_cell(c: &CellKey) -> Vec<u8> {
    let tags: Vec<String> = c.tags.iter().map(|(d, v)| format!("{d}={v}")).collect();
    format!("{}/{}/{}/{}", c.period, c.org, c.unit, tags.join(";")).into_bytes()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn decode_cell(period: Period, key: &[u8]) -> Result<CellKey, StoreError> {
    let bad = || StoreError::Corrupt(format!("cell key {}", String::from_utf8_lossy(key)));
    let text = std::str::from_utf8(key).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '/');
    let (_, org, unit, tags) = (
        parts.next(),
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let tags = tags
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(d, v)| (d.to_string(), v.to_string()))
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    Ok(CellKey {
        period,
        org: org.to_string(),
        unit: unit.to_string(),
        tags,
    })
}

// ----- web sign-in: invites, sessions, account names, follow-up requests --------------------

/// Trees of the web sign-in, in the main database. Opened by name on use (sled caches open
/// trees), so the [`Store`] struct stays as it was.
const INVITES: &str = "web_invites";
/// Sessions, keyed by the keyed hash of the session cookie's secret.
const SESSIONS: &str = "web_sessions";
/// The name a coordinator gave a supporter's account at invite, keyed by the account's token
/// id: never stored with ticks, counts or pseudonyms.
const ACCOUNT_NAMES: &str = "web_account_names";
/// Open follow-up requests, keyed by the account's token id (the value is empty).
const FOLLOWUPS: &str = "web_followups";

impl Store {
    fn web_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.main.db.open_tree(name)?)
    }

    /// Stores an invite record under the keyed hash of its secret.
    pub fn put_invite<T: serde::Serialize>(
        &self,
        hash: &[u8; 32],
        record: &T,
    ) -> Result<(), StoreError> {
        self.guard()?;
        self.web_tree(INVITES)?.insert(hash, encode(record)?)?;
        Ok(())
    }

    /// Removes and returns the invite stored under `hash`: removal is atomic, so of two
    /// requests with the same link only one gets the record (single use).
    pub fn take_invite<T: serde::de::DeserializeOwned>(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<T>, StoreError> {
        self.guard()?;
        self.web_tree(INVITES)?
            .remove(hash)?
            .map(|v| decode(&v, "invite record"))
            .transpose()
    }

    /// Every invite record with the hash it is stored under.
    pub fn invites<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Vec<([u8; 32], T)>, StoreError> {
        self.web_tree(INVITES)?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let mut hash = [0u8; 32];
                if k.len() != 32 {
                    return Err(StoreError::Corrupt("invite key is not 32 bytes".into()));
                }
                hash.copy_from_slice(&k);
                Ok((hash, decode(&v, "invite record")?))
            })
            .collect()
    }

    /// Stores a session record under the keyed hash of its secret.
    pub fn put_session<T: serde::Serialize>(
        &self,
        hash: &[u8; 32],
        record: &T,
    ) -> Result<(), StoreError> {
        self.guard()?;
        self.web_tree(SESSIONS)?.insert(hash, encode(record)?)?;
        Ok(())
    }

    /// The session stored under `hash`.
    pub fn session<T: serde::de::DeserializeOwned>(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<T>, StoreError> {
        self.web_tree(SESSIONS)?
            .get(hash)?
            .map(|v| decode(&v, "session record"))
            .transpose()
    }

    /// Deletes the session stored under `hash` (sign-out, expiry).
    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        self.guard()?;
        self.web_tree(SESSIONS)?.remove(hash)?;
        Ok(())
    }

    /// Stores the name a coordinator gave account `id` at invite.
    pub fn set_account_name(&self, id: &str, name: &str) -> Result<(), StoreError> {
        self.guard()?;
        self.web_tree(ACCOUNT_NAMES)?
            .insert(id.as_bytes(), name.as_bytes())?;
        Ok(())
    }

    /// The name a coordinator gave account `id`, if any.
    pub fn account_name(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .web_tree(ACCOUNT_NAMES)?
            .get(id.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Opens (`true`) or withdraws (`false`) account `id`'s follow-up request.
    pub fn set_followup(&self, id: &str, open: bool) -> Result<(), StoreError> {
        self.guard()?;
        let tree = self.web_tree(FOLLOWUPS)?;
        if open {
            tree.insert(id.as_bytes(), &[] as &[u8])?;
        } else {
            tree.remove(id.as_bytes())?;
        }
        Ok(())
    }

    /// The account ids with an open follow-up request.
    pub fn followups(&self) -> Result<Vec<String>, StoreError> {
        self.web_tree(FOLLOWUPS)?
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }
}

// ----- backup: a consistent copy of every tree, and a new data directory from one -----------

/// Which database of a data directory a tree belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Database {
    /// The main database (`db/`): releases, ledger, keys, tokens, periods, web sign-in.
    Main,
    /// The raw database of one base period (`raw/PERIOD/`): counter cells, supporter counters,
    /// the pseudonym secret.
    Raw(Period),
}

/// One tree's entries as stored, in key order: keys and values are copied byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeCopy {
    /// The database the tree lives in.
    pub database: Database,
    /// The tree's name in that database (sled's default tree included).
    pub name: Vec<u8>,
    /// Every entry, key then value.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A copy of a data directory taken at one instant, for a backup.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every tree of the main database, and of each period's raw database if asked for.
    pub trees: Vec<TreeCopy>,
    /// The regime list file ([`REGIMES_FILE`]) as stored, if the directory has one.
    pub regimes: Option<Vec<u8>>,
    /// Base periods with raw data on disk at that instant (whether or not it was copied).
    pub raw_periods: Vec<Period>,
}

impl Store {
    /// Copies every tree of the main database (and, with `include_raw`, of every period's raw
    /// database) while no write that spans trees can run, so the copy holds each release with
    /// its ledger entry and each token with its id, never half of one. Writes wait for the
    /// copy (milliseconds for a small store; see docs/backup.md for measured times).
    pub fn snapshot(&self, include_raw: bool) -> Result<Snapshot, StoreError> {
        let _gate = self
            .snapshot_gate
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut trees = Vec::new();
        copy_db(&self.main.db, Database::Main, &mut trees)?;
        let raw_periods = self.raw_periods()?;
        if include_raw {
            for &period in &raw_periods {
                if let Some(db) = self.period_db(period, false)? {
                    copy_db(&db.handle.db, Database::Raw(period), &mut trees)?;
                }
            }
        }
        Ok(Snapshot {
            trees,
            regimes: read_regimes(self.data_dir())?,
            raw_periods,
        })
    }

    /// The data directory this store was opened on (as given to [`Store::open`]).
    pub fn data_dir(&self) -> &Path {
        self.raw_dir.parent().unwrap_or(Path::new("."))
    }
}

/// Appends a copy of every tree of `db` to `out`.
fn copy_db(db: &sled::Db, database: Database, out: &mut Vec<TreeCopy>) -> Result<(), StoreError> {
    let mut names = db.tree_names();
    names.sort();
    for name in names {
        let tree = db.open_tree(&name)?;
        let entries = tree
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        out.push(TreeCopy {
            database,
            name: name.to_vec(),
            entries,
        });
    }
    Ok(())
}

/// Writes `trees` and the regime list into `dir`, a new data directory (it must hold no
/// database yet), syncs them, and makes it the service user's alone (0700/0600). Used by
/// restore, on a temporary directory that is renamed into place only when this succeeded.
pub fn write_snapshot(
    dir: &Path,
    trees: &[TreeCopy],
    regimes: Option<&[u8]>,
) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir.join("raw"))?;
    let mut by_db: BTreeMap<Database, Vec<&TreeCopy>> = BTreeMap::new();
    by_db.entry(Database::Main).or_default();
    for t in trees {
        by_db.entry(t.database).or_default().push(t);
    }
    for (database, trees) in by_db {
        let path = match database {
            Database::Main => dir.join("db"),
            Database::Raw(p) => dir.join("raw").join(p.to_string()),
        };
        if path.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} exists already; a restore writes only into a new directory",
                path.display()
            )));
        }
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()?;
        for t in trees {
            let tree = db.open_tree(&t.name)?;
            let mut batch = sled::Batch::default();
            for (k, v) in &t.entries {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        drop(db);
        File::open(path.join("db"))?.sync_all()?;
    }
    if let Some(bytes) = regimes {
        write_regimes(dir, bytes)?;
    }
    restrict(dir)?;
    File::open(dir.join("raw"))?.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Whether a process (a running server) holds the data directory `dir` open: sled keeps an
/// exclusive lock on the main database's file (`db/db`) while it is open. `false` when there is
/// no such file. Restore asks before it replaces a directory, since renaming it away under a
/// running server would lose every tick that server acknowledges afterwards.
pub fn in_use(dir: &Path) -> Result<bool, StoreError> {
    use fs2::FileExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db").join("db"))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    match file.try_lock_exclusive() {
        Ok(()) => {
            FileExt::unlock(&file)?;
            Ok(false)
        }
        Err(e) if e.kind() == fs2::lock_contended_error().kind() => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Whether `e` says the data directory is held by another process (a running server): sled
/// locks its files exclusively, so a second process cannot open them.
pub fn is_locked(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_opens_once_its_lock_is_released_and_not_while_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None);
        let first = config.open().unwrap();
        // Released 300 ms into the second open's wait: the second open succeeds.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = open_retrying(&config).expect("opens once the lock is released");
        release.join().unwrap();
        // Held for good (a second server on the directory): refused after the wait.
        let started = std::time::Instant::now();
        let third = open_retrying(&config).map(|_| ());
        assert!(
            matches!(&third, Err(e) if e.to_string().contains("could not acquire lock")),
            "{third:?}"
        );
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(second);
    }

    fn cell(period: &str) -> CellKey {
        CellKey {
            period: period.parse().unwrap(),
            org: "o".into(),
            unit: "u".into(),
            tags: [
                ("a".to_string(), "x".to_string()),
                ("b".to_string(), "y".to_string()),
            ]
            .into(),
        }
    }

    #[tokio::test]
    async fn closing_a_period_without_ticks_still_stops_a_late_tick() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let period: Period = "2026-11".parse().unwrap();
        // The close comes before the period ever had a tick (and a raw database) ...
        store.set_period_state(period, PeriodState::Closed).unwrap();
        // ... and a tick that passed the clock check just before it lands after.
        let w = TickWrite {
            period,
            cell: cell("2026-11"),
            pseudonym: [1; 32],
            count: 1,
            cap: 5,
            idempotency: None,
        };
        assert!(matches!(
            store.apply_tick(&w),
            Err(StoreError::PeriodNotOpen(_))
        ));
        assert!(store.cells_of(period).unwrap().is_empty());
        // A purged period's write is never acknowledged.
        store.purge(period).unwrap();
        assert!(store.durable_period(period).await.is_err());
    }

    #[tokio::test]
    async fn an_undone_tick_leaves_no_trace_and_its_key_can_be_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = TickWrite {
            period: "2026-11".parse().unwrap(),
            cell: cell("2026-11"),
            pseudonym: [3; 32],
            count: 2,
            cap: 5,
            idempotency: Some([4; 32]),
        };
        let before = store.raw_snapshot().unwrap();
        assert_eq!(store.apply_tick(&w).unwrap(), TickApplied::Counted);
        store.undo_tick(&w).unwrap();
        let after: Vec<_> = store
            .raw_snapshot()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.ends_with(b"secret"))
            .collect();
        let before: Vec<_> = before.into_iter().collect();
        assert_eq!(after, before);
        assert_eq!(store.apply_tick(&w).unwrap(), TickApplied::Counted);
    }

    #[test]
    fn closing_a_period_deletes_its_idempotency_records_and_keeps_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let period: Period = "2026-11".parse().unwrap();
        let w = TickWrite {
            period,
            cell: cell("2026-11"),
            pseudonym: [3; 32],
            count: 2,
            cap: 5,
            idempotency: Some([4; 32]),
        };
        assert_eq!(store.apply_tick(&w).unwrap(), TickApplied::Counted);
        assert_eq!(store.idempotent_answer(period, &[4; 32]).unwrap(), Some(2));
        store.set_period_state(period, PeriodState::Closed).unwrap();
        assert_eq!(store.idempotent_answer(period, &[4; 32]).unwrap(), None);
        assert_eq!(store.cells_of(period).unwrap().len(), 1);
        // A reopened store finds no record either (the clear is durable).
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.idempotent_answer(period, &[4; 32]).unwrap(), None);
        assert_eq!(store.cells_of(period).unwrap().len(), 1);
    }

    /// A release and its ledger entry for `period`, with no cells (the store does not look).
    fn release_pair(period: Period, marginal: &str) -> (Release, LedgerEntry) {
        let id = format!("{period}/o/{marginal}");
        let release = Release {
            id: id.clone(),
            period,
            org: "o".into(),
            marginal: marginal.into(),
            kind: "contacts".into(),
            dimensions: vec![],
            covers: vec![period],
            mechanism: "discrete_laplace".into(),
            privacy_unit: "contact".into(),
            epsilon: Some(0.1),
            rho: None,
            sensitivity: 1,
            scale: 10.0,
            sensitive_scale: None,
            confidence: 0.95,
            suppress_below: 3,
            total_estimate: 0,
            noise_variance: 0.0,
            cells: vec![],
        };
        let entry = LedgerEntry {
            release: id,
            org: "o".into(),
            marginal: marginal.into(),
            period,
            covers: vec![period],
            measure: "epsilon".into(),
            spend: 0.1,
        };
        (release, entry)
    }

    #[test]
    fn a_snapshot_taken_while_releases_are_committed_holds_each_with_its_ledger_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut period: Period = "2020-01".parse().unwrap();
                for _ in 0..60 {
                    let batch: Vec<_> = (0..5)
                        .map(|m| release_pair(period, &format!("m{m}")))
                        .collect();
                    store.commit_releases(&batch).unwrap();
                    period = period.next();
                }
            })
        };
        let keys = |snap: &Snapshot, tree: &str| -> Vec<Vec<u8>> {
            snap.trees
                .iter()
                .find(|t| t.database == Database::Main && t.name == tree.as_bytes())
                .map(|t| t.entries.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default()
        };
        while !writer.is_finished() {
            let snap = store.snapshot(false).unwrap();
            let (releases, ledger) = (keys(&snap, "releases"), keys(&snap, "ledger"));
            assert_eq!(releases, ledger, "every release with its ledger entry");
            assert_eq!(releases.len() % 5, 0, "whole batches only");
            assert!(keys(&snap, "staged").is_empty());
            assert_eq!(keys(&snap, "releases_by_org").len(), releases.len());
        }
        writer.join().unwrap();
        let snap = store.snapshot(false).unwrap();
        assert_eq!(keys(&snap, "releases").len(), 300);
        // Written into a new directory, it opens with the same bytes.
        let copy = tempfile::tempdir().unwrap();
        let target = copy.path().join("data");
        write_snapshot(&target, &snap.trees, snap.regimes.as_deref()).unwrap();
        let restored = Store::open(&target).unwrap();
        let id = "2020-03/o/m2";
        assert_eq!(
            restored.release_bytes(id).unwrap(),
            store.release_bytes(id).unwrap()
        );
        assert_eq!(restored.ledger().unwrap(), store.ledger().unwrap());
    }

    #[test]
    fn a_snapshot_with_raw_data_taken_while_ticks_and_releases_are_written_is_whole_and_never_blocks()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let period: Period = "2026-11".parse().unwrap();
        // Ticks (some taken back, as after a failed sync) and release batches, from two
        // threads, while the main thread takes snapshots with raw data: every snapshot has
        // each tick in both its cell and its supporter's counter, or in neither, and all
        // threads finish (the gate is never taken twice by one thread).
        let ticks = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    let w = TickWrite {
                        period,
                        cell: cell("2026-11"),
                        pseudonym: [(i % 7) as u8; 32],
                        count: 1 + i % 3,
                        cap: 10_000,
                        idempotency: Some([(i % 251) as u8; 32]).filter(|_| i % 2 == 0),
                    };
                    if store.apply_tick(&w).unwrap() == TickApplied::Counted && i % 5 == 0 {
                        store.undo_tick(&w).unwrap();
                    }
                }
            })
        };
        let releases = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut p: Period = "2020-01".parse().unwrap();
                for _ in 0..30 {
                    store.commit_releases(&[release_pair(p, "t")]).unwrap();
                    p = p.next();
                }
            })
        };
        let sum = |snap: &Snapshot, tree: &str| -> u64 {
            snap.trees
                .iter()
                .filter(|t| t.database == Database::Raw(period) && t.name == tree.as_bytes())
                .flat_map(|t| t.entries.iter())
                .map(|(_, v)| match v.len() {
                    8 => be_u64(v),
                    _ => u64::from(be_u32(v)),
                })
                .sum()
        };
        let mut taken = 0;
        while !(ticks.is_finished() && releases.is_finished()) || taken == 0 {
            let snap = store.snapshot(true).unwrap();
            assert_eq!(sum(&snap, "cells"), sum(&snap, "load"), "whole ticks only");
            taken += 1;
        }
        ticks.join().unwrap();
        releases.join().unwrap();
        let snap = store.snapshot(true).unwrap();
        assert_eq!(sum(&snap, "cells"), sum(&snap, "load"));
        assert!(sum(&snap, "cells") > 0);
    }

    #[test]
    fn the_release_index_is_built_for_data_written_before_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Releases as an older version wrote them: in `releases` only, no index, no flag.
        for id in ["2026-11/o/total", "2026-Q4/o/unit", "2026-10/p/total"] {
            store.releases.insert(id, "{}").unwrap();
        }
        store.meta.remove(RELEASE_INDEX_KEY).unwrap();
        store.build_release_index().unwrap();
        let ids = |scan: &ReleaseScan<'_>| -> Vec<String> {
            store
                .release_index(scan, None)
                .unwrap()
                .map(|e| e.unwrap().id)
                .collect()
        };
        assert_eq!(
            ids(&ReleaseScan::default()),
            // Period start, then the period's name: a month before its quarter.
            ["2026-10/p/total", "2026-Q4/o/unit", "2026-11/o/total"]
        );
        let o = ReleaseScan {
            org: Some("o"),
            ..ReleaseScan::default()
        };
        assert_eq!(ids(&o), ["2026-Q4/o/unit", "2026-11/o/total"]);
        // A key outside the scan is not a place to resume from.
        assert!(matches!(
            store.release_index(&o, Some(b"p/2026-10-01/2026-10/total")),
            Err(StoreError::CursorOutOfRange)
        ));
    }

    #[test]
    fn cell_keys_round_trip() {
        let c = cell("2026-11");
        assert_eq!(decode_cell(c.period, &encode_cell(&c)).unwrap(), c);
        assert_eq!(encode_cell(&c), b"2026-11/o/u/a=x;b=y");
    }

    #[tokio::test]
    async fn ticks_count_cap_and_respect_period_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = TickWrite {
            period: "2026-11".parse().unwrap(),
            cell: cell("2026-11"),
            pseudonym: [7; 32],
            count: 3,
            cap: 5,
            idempotency: Some([9; 32]),
        };
        assert_eq!(store.apply_tick(&w).unwrap(), TickApplied::Counted);
        // The same key again: answered as the first time, nothing changes.
        assert_eq!(store.apply_tick(&w).unwrap(), TickApplied::Replayed(3));
        let w = TickWrite {
            idempotency: None,
            ..w
        };
        store.durable_period(w.period).await.unwrap();
        assert!(matches!(
            store.apply_tick(&w),
            Err(StoreError::OverCap { used: 3, cap: 5 })
        ));
        assert_eq!(
            store.cells_of(w.period).unwrap(),
            vec![(cell("2026-11"), 3)]
        );
        assert_eq!(store.supporter_counts(w.period, "o").unwrap(), vec![3]);
        store
            .set_period_state(w.period, PeriodState::Closed)
            .unwrap();
        let w1 = TickWrite { count: 1, ..w };
        assert!(matches!(
            store.apply_tick(&w1),
            Err(StoreError::PeriodNotOpen(PeriodState::Closed))
        ));
        assert_eq!(
            store.cells_of(w1.period).unwrap(),
            vec![(cell("2026-11"), 3)]
        );
    }
}
