//! Storage: the only module that imports `sled`. Key layout, transactions and durability.
//!
//! # Key layout
//!
//! Every key is built from policy ids, period names and random or keyed bytes; nothing a person
//! typed and no time finer than the period is ever written.
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | `server_key`, `signing_key`, `schema` | 32 key bytes; Ed25519 PKCS#8; `1` |
//! | `cells` | `PERIOD/ORG/UNIT/dim=value;dim=value…` (dimensions in id order) | count, u64 big-endian |
//! | `load` | `PERIOD/ORG/` + 32-byte pseudonym | contacts this period, u32 big-endian |
//! | `period_secrets` | `PERIOD` | 32 random bytes (pseudonym key of that period) |
//! | `periods` | `PERIOD` | state name (`closed`, `released`, `purged`); open periods have none |
//! | `tokens` | HMAC of the token under the server key (32 bytes) | token record, JSON |
//! | `token_ids` | token id | the token's HMAC (32 bytes) |
//!
//! # Durability
//!
//! A tick is applied in one sled transaction over `cells`, `load` and `periods` (the period's
//! state is read inside it, so a tick cannot slip past a concurrent close), then the caller
//! awaits [`Store::durable`], which returns only after a `flush` (an fsync of sled's log) that
//! started after the write. One background thread runs the flushes and lets every waiter that
//! queued before a flush started share it (group commit).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::{CellKey, Period, PeriodState, TokenRecord};

/// Storage failures and the rejections decided inside a transaction.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A fresh secret could not be drawn.
    #[error("could not draw a secret: {0}")]
    Secret(String),
    /// The flush thread is gone (the store is shutting down).
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The tick would take the supporter over the period cap; `used` is what they had logged.
    #[error("over the per-supporter cap ({used} of {cap} used)")]
    OverCap { used: u32, cap: u32 },
    /// The period no longer accepts ticks.
    #[error("period is {}", .0.as_str())]
    PeriodNotOpen(PeriodState),
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The data directory's sled database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    cells: sled::Tree,
    load: sled::Tree,
    secrets: sled::Tree,
    periods: sled::Tree,
    tokens: sled::Tree,
    token_ids: sled::Tree,
    flusher: mpsc::Sender<Waiter>,
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
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts its flush thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            // Flushing is ours (group commit after each tick); sled's timer would only add I/O.
            .flush_every_ms(None)
            .open()?;
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flush_db = db.clone();
        thread::Builder::new()
            .name("tellestrek-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = flush_db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the flush thread: {e}")))?;
        let store = Store {
            meta: db.open_tree("meta")?,
            cells: db.open_tree("cells")?,
            load: db.open_tree("load")?,
            secrets: db.open_tree("period_secrets")?,
            periods: db.open_tree("periods")?,
            tokens: db.open_tree("tokens")?,
            token_ids: db.open_tree("token_ids")?,
            db,
            flusher: tx,
        };
        store.meta.insert("schema", "1")?;
        Ok(store)
    }

    /// Waits until everything written before this call is on disk. Concurrent callers share
    /// one flush.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flusher
            .send(tx)
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await
            .map_err(|_| StoreError::ShuttingDown)?
            .map_err(|e| StoreError::Corrupt(format!("flush failed: {e}")))
    }

    /// Flushes synchronously (shutdown, CLI).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Returns the value of meta key `name`, creating it with `make` if absent. Safe under
    /// concurrent first starts: the first writer wins and everyone gets its value.
    pub fn meta_get_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<(Vec<u8>, bool), StoreError> {
        if let Some(v) = self.meta.get(name)? {
            return Ok((v.to_vec(), false));
        }
        let fresh = make()?;
        match self
            .meta
            .compare_and_swap(name, None as Option<&[u8]>, Some(fresh.as_slice()))?
        {
            Ok(()) => {
                self.flush()?;
                Ok((fresh, true))
            }
            Err(cas) => Ok((cas.current.map(|v| v.to_vec()).unwrap_or_default(), false)),
        }
    }

    /// The pseudonym secret of `period`, drawn on first use.
    pub fn period_secret(
        &self,
        period: Period,
        make: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let key = period.to_string();
        if let Some(v) = self.secrets.get(&key)? {
            return Ok(v.to_vec());
        }
        let fresh = make()?;
        match self
            .secrets
            .compare_and_swap(&key, None as Option<&[u8]>, Some(fresh.as_slice()))?
        {
            Ok(()) => Ok(fresh),
            Err(cas) => cas
                .current
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::Corrupt(format!("period secret of {period} vanished"))),
        }
    }

    /// Applies a tick atomically: refuses it if the period is no longer open or the supporter
    /// would pass the cap, else increments the cell and the supporter's counter. Returns the
    /// supporter's contacts in the period after the tick. Not yet durable: await
    /// [`Store::durable`] before acknowledging.
    pub fn apply_tick(&self, w: &TickWrite) -> Result<u32, StoreError> {
        let period_key = w.period.to_string();
        let cell_key = encode_cell(&w.cell);
        let load_key = load_key(w.period, &w.cell.org, &w.pseudonym);
        let result =
            (&self.cells, &self.load, &self.periods).transaction(|(cells, load, periods)| {
                if let Some(state) = periods.get(period_key.as_bytes())? {
                    let state = decode_state(&state).unwrap_or(PeriodState::Closed);
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::PeriodNotOpen(state),
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
                let now = used + w.count;
                load.insert(load_key.as_slice(), &now.to_be_bytes())?;
                Ok(now)
            });
        match result {
            Ok(v) => Ok(v),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }

    /// The supporter's contacts logged in `period` so far (their own remaining allowance).
    pub fn supporter_used(
        &self,
        period: Period,
        org: &str,
        pseudonym: &[u8; 32],
    ) -> Result<u32, StoreError> {
        Ok(self
            .load
            .get(load_key(period, org, pseudonym))?
            .map(|v| be_u32(&v))
            .unwrap_or(0))
    }

    /// Every raw cell of `period`. For the release job (and tests) only: raw counts never leave
    /// the process except as noisy releases.
    pub fn cells_of(&self, period: Period) -> Result<Vec<(CellKey, u64)>, StoreError> {
        let prefix = format!("{period}/");
        self.cells
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((decode_cell(period, &k)?, be_u64(&v)))
            })
            .collect()
    }

    /// Every supporter's contact count in `period` for `org`, as a list without pseudonyms.
    /// For the release job's load indicator only.
    pub fn supporter_counts(&self, period: Period, org: &str) -> Result<Vec<u32>, StoreError> {
        let prefix = format!("{period}/{org}/");
        self.load
            .scan_prefix(prefix.as_bytes())
            .values()
            .map(|v| Ok(be_u32(&v?)))
            .collect()
    }

    /// Every raw byte of the counting trees, for tests that prove a rejected request changed
    /// nothing.
    pub fn raw_snapshot(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        for (name, tree) in [
            ("c", &self.cells),
            ("l", &self.load),
            ("p", &self.periods),
            ("t", &self.tokens),
        ] {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let mut key = name.as_bytes().to_vec();
                key.extend_from_slice(&k);
                out.insert(key, v.to_vec());
            }
        }
        Ok(out)
    }

    /// Periods that have raw data, a secret or a recorded state, with that state if any.
    pub fn known_periods(&self) -> Result<BTreeMap<String, Option<PeriodState>>, StoreError> {
        let mut out = BTreeMap::new();
        for k in self.secrets.iter().keys() {
            out.insert(String::from_utf8_lossy(&k?).into_owned(), None);
        }
        for kv in self.periods.iter() {
            let (k, v) = kv?;
            out.insert(String::from_utf8_lossy(&k).into_owned(), decode_state(&v));
        }
        Ok(out)
    }

    /// The recorded state of `period` (none while open).
    pub fn period_state(&self, period: Period) -> Result<Option<PeriodState>, StoreError> {
        Ok(self
            .periods
            .get(period.to_string())?
            .and_then(|v| decode_state(&v)))
    }

    /// Records a state for `period`.
    pub fn set_period_state(&self, period: Period, state: PeriodState) -> Result<(), StoreError> {
        self.periods.insert(period.to_string(), state.as_str())?;
        Ok(())
    }

    /// Stores a new token record under its hash.
    pub fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
        self.tokens.get(hash)?.map(|v| decode_token(&v)).transpose()
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens
            .iter()
            .values()
            .map(|v| decode_token(&v?))
            .collect()
    }

    /// The token record with public id `id`.
    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.token_ids.get(id)? {
            Some(hash) => self.tokens.get(hash)?.map(|v| decode_token(&v)).transpose(),
            None => Ok(None),
        }
    }

    /// Deletes the token with public id `id`; returns whether it existed.
    pub fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        (&self.tokens, &self.token_ids)
            .transaction(|(tokens, ids)| {
                let Some(hash) = ids.remove(id.as_bytes())? else {
                    return Ok(false);
                };
                tokens.remove(hash)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(tx_err)
    }
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn decode_token(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("token record: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert_eq!(store.apply_tick(&w).unwrap(), 3);
        store.durable().await.unwrap();
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
