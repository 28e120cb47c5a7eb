//! Backup and restore of a data directory: a consistent copy of its databases in a directory
//! of plain files with a manifest, and a new data directory from such a copy.
//!
//! # How a copy is taken
//!
//! sled locks its files exclusively, so a second process cannot open the store of a running
//! server, and copying its files from outside would catch a log segment mid-write. The copy is
//! therefore always taken by the process that holds the store: by the running server, asked
//! through `POST /api/v1/admin/backup` (admin token), which writes it to a directory on its own
//! machine, readable by its own user only; or by `tellestrek backup` itself when the server is
//! stopped. Both call [`take`], which reads every tree through [`Store::snapshot`] while no
//! write that spans trees can run, so a release is never copied without its ledger entry.
//!
//! # Layout of a backup directory (0700, files 0600)
//!
//! | file | what |
//! | --- | --- |
//! | `manifest.json` | [`Manifest`]: format, tool version, what is included, SHA-256 of every other file, the policy fingerprint |
//! | `regimes.json` | the policies the data was collected under, as stored |
//! | `main/TREE.tree` | one tree of the main database: releases, ledger, keys, tokens, periods, invites, sessions, follow-ups |
//! | `raw/PERIOD/TREE.tree` | with `--include-raw` only: one tree of a period's raw database |
//!
//! A `.tree` file is [`TREE_MAGIC`] followed by each entry as a 4-byte big-endian key length,
//! the key, a 4-byte big-endian value length and the value: the stored bytes, unchanged, so
//! every release, signature and ledger entry comes back byte for byte. No file name and no
//! manifest field holds a count of anything a person logged.
//!
//! # Raw data is left out by default
//!
//! Counter cells, supporter counters and pseudonym secrets are deleted on schedule (the
//! policy's retention); a backup holding them would keep them beyond that. So a default backup
//! holds none, and a restore of it marks every period whose raw data was left out and that has
//! ended by the day of the restore as purged: the releases still to be drawn from those periods
//! are never drawn from missing data (they would publish a count near zero). A period still
//! running keeps collecting from zero. `--include-raw` copies the raw data, with a warning.
//!
//! Must not depend on axum (the endpoint lives in `api`) nor on sled (only through `store`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::sha256_hex;
use crate::domain::{Period, PeriodState};
use crate::store::{self, Database, Store, StoreError, TreeCopy};

/// Format of the backup directory this build writes and reads. Bumped when the layout changes.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name, at the top of the backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The first bytes of every `.tree` file.
pub const TREE_MAGIC: &[u8; 8] = b"TSTREE01";

/// The regime list's name inside a backup (the same as in a data directory).
const REGIMES: &str = store::REGIMES_FILE;

/// Failures of a backup or a restore; each names the file or directory at fault.
#[derive(Debug, Error)]
pub enum BackupError {
    /// Reading the data directory or writing the new one failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the backup or the target could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The directory to write a backup into is not new (or empty).
    #[error(
        "the backup target {} exists and is not empty; give a new (or empty) directory",
        .0.display()
    )]
    TargetNotEmpty(PathBuf),
    /// The backup target is inside the data directory (a copy there would be copied with it,
    /// raw data and all, and confuse a restore).
    #[error("the backup target {} is inside the data directory; give a directory outside it", .0.display())]
    InsideData(PathBuf),
    /// The backup target given to a running server is not an absolute path.
    #[error("`to` must be an absolute path on the server's machine, not {0:?}")]
    RelativeTarget(String),
    /// The backup holds raw data of periods that have ended: a restored server would draw their
    /// releases (and the quarter's and year's tables over them), which the primary may have
    /// drawn already after the backup: two draws of one release, one of them outside the ledger.
    #[error(
        "the backup holds raw data of periods that have ended ({}): a restored server would draw releases from them that the old server may have drawn after the backup, and a second draw spends their privacy budget twice; nothing was restored. Restore a backup without raw data, or, if the old server drew no release after this backup was taken (its log: no `lifecycle job ran` with `drawn` above 0 since), restore with --no-release-since-backup",
        .0.join(", ")
    )]
    RawOfEndedPeriods(Vec<String>),
    /// The data directory to replace is open in a running server (sled's lock): renamed away
    /// under it, every tick it acknowledged afterwards would be lost.
    #[error(
        "the data directory {} is in use by a running server; stop the server (systemctl stop tellestrek), then restore; nothing was restored",
        .0.display()
    )]
    DataInUse(PathBuf),
    /// The directory restored from has no manifest.
    #[error("{}: no {MANIFEST_FILE}: not a Tellestrek backup", .0.display())]
    NoManifest(PathBuf),
    /// The manifest is not one this build reads.
    #[error("{MANIFEST_FILE}: {0}")]
    BadManifest(String),
    /// A file's bytes do not match the checksum in the manifest.
    #[error(
        "{0}: its SHA-256 does not match the manifest (the file was changed or damaged after the backup); nothing was restored"
    )]
    Checksum(String),
    /// A file the manifest lists is not in the backup.
    #[error("{0}: listed in the manifest but missing from the backup; nothing was restored")]
    Missing(String),
    /// A file is in the backup but not in its manifest.
    #[error("{0}: in the backup directory but not in its manifest; nothing was restored")]
    Unlisted(String),
    /// A `.tree` file is not in the format (its checksum matched: a faulty backup tool).
    #[error("{file}: not a tree file: {detail}; nothing was restored")]
    BadTree { file: String, detail: String },
    /// The data directory to restore into holds something and `--force` was not given.
    #[error(
        "the data directory {} is not empty; restore into a new or empty one, or pass --force to replace it",
        .0.display()
    )]
    DataNotEmpty(PathBuf),
}

impl BackupError {
    /// The error for the log: without any path, since the backup's target was typed by an
    /// admin (non-negotiable 1: nothing a person typed in a log). The answer to the admin keeps
    /// the full text.
    pub fn log_detail(&self) -> String {
        match self {
            // The OS's words for the error, never the io::Error's own text: tempfile's errors
            // carry the path in it ("… at path \"/…\"").
            BackupError::Io { source, .. } => match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
                None => std::io::Error::from(source.kind()).to_string(),
            },
            BackupError::Store(e) => e.to_string(),
            BackupError::BadManifest(_) => "the manifest could not be written".to_string(),
            other => format!("{other:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("backup error")
                .to_string(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup directory holds, written last (a directory without one is not a backup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version, [`FORMAT_VERSION`] when written by this build.
    pub format: u32,
    /// The program that wrote it, `tellestrek VERSION`.
    pub tool: String,
    /// `running server` (through the admin endpoint) or `stopped server` (the data directory
    /// opened by `tellestrek backup` itself).
    pub taken_from: String,
    /// The period the server was last used in when the copy was taken (never a finer time).
    pub taken_in_period: Option<String>,
    /// What the backup holds, in words, one item a line.
    pub includes: Vec<String>,
    /// Where the server key is: in this backup, or outside the data directory (then restore
    /// needs the same key file).
    pub server_key: String,
    /// Whether the raw data of periods not yet purged is in the backup (`--include-raw`).
    pub raw_included: bool,
    /// Periods that had raw data when the copy was taken: copied if `raw_included`, else left
    /// out (a restore then marks those that have ended as purged).
    pub raw_periods: Vec<String>,
    /// SHA-256 of `regimes.json`: every policy the data was collected under, as stored.
    pub policy_fingerprint: Option<String>,
    /// SHA-256 (lowercase hex) of every other file, by its path relative to the backup.
    pub files: BTreeMap<String, String>,
}

/// How a copy is taken.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Copy the raw data of unpurged periods too (off by default; see the module doc).
    pub include_raw: bool,
    /// Where the key file is, if the caller knows it (recorded in the manifest).
    pub key_file: Option<PathBuf>,
    /// True when the copy is taken by the running server.
    pub online: bool,
}

/// The warning printed (and logged) for a backup with raw data: names the periods (never a
/// count) and says how long such a copy may be kept.
pub fn raw_warning(periods: &[String]) -> String {
    format!(
        "this backup holds raw data (counter cells, supporter counters and pseudonym secrets) of {}. \
         The server deletes each period's raw data on schedule (the policy's retention); this copy \
         keeps it beyond that purge unless it is rotated: delete each backup made with --include-raw \
         within the grace period (period.grace_days, 7 days by default), so no raw data outlives its \
         purge by more than that. Keep it encrypted and readable by the service's user only, and do \
         not keep a series of them: two raw backups an hour apart tell how many contacts were logged \
         in that hour, a time far finer than the period.",
        if periods.is_empty() {
            "no period (none has raw data now)".to_string()
        } else {
            format!("the periods {}", periods.join(", "))
        }
    )
}

/// Takes a consistent copy of `store` into `to`, a new or empty directory: written into a
/// temporary directory beside it, synced, then renamed into place, so `to` is either absent
/// (or empty) or a whole backup. Returns the manifest written.
pub fn take(store: &Store, to: &Path, opts: &Options) -> Result<Manifest, BackupError> {
    if !to.is_absolute() {
        return Err(BackupError::RelativeTarget(to.display().to_string()));
    }
    if !is_empty_or_absent(to)? {
        return Err(BackupError::TargetNotEmpty(to.to_path_buf()));
    }
    let parent = to.parent().unwrap_or(Path::new("/"));
    // Compared as the file system resolves them (symlinks, `..`), where they exist.
    if let (Ok(data), Ok(p)) = (
        std::fs::canonicalize(store.data_dir()),
        std::fs::canonicalize(parent),
    ) && (p.starts_with(&data) || to.starts_with(store.data_dir()))
    {
        return Err(BackupError::InsideData(to.to_path_buf()));
    }
    let snapshot = store.snapshot(opts.include_raw)?;
    // Meta values read after the snapshot change only at a start (the key) or once a period.
    let key_in_data = store.meta_bytes("server_key")?.is_some();
    let taken_in_period = store.meta_text("latest_period")?;

    let tmp = tempfile::Builder::new()
        .prefix(".tellestrek-backup-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let mut files = BTreeMap::new();
    let mut put = |rel: String, bytes: &[u8]| -> Result<(), BackupError> {
        let path = tmp.path().join(&rel);
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        write_private(&path, bytes)?;
        files.insert(rel, sha256_hex(bytes));
        Ok(())
    };
    if let Some(bytes) = &snapshot.regimes {
        put(REGIMES.to_string(), bytes)?;
    }
    for tree in &snapshot.trees {
        put(
            tree_file(tree.database, &tree.name),
            &encode_tree(&tree.entries),
        )?;
    }
    let mut includes = vec![
        "releases (as stored: the signed bytes served)".to_string(),
        "ledger (the privacy spend of every release)".to_string(),
        "signing key (Ed25519, PKCS#8)".to_string(),
        "regimes (every policy the data was collected under)".to_string(),
        "period states".to_string(),
        "accounts and tokens (keyed hashes only)".to_string(),
        "invites and sessions (keyed hashes only)".to_string(),
        "account names given at invite, open follow-up requests".to_string(),
    ];
    if key_in_data {
        includes.push("server key (kept in this data directory)".to_string());
    }
    if opts.include_raw {
        includes.push("raw data of unpurged periods (--include-raw)".to_string());
    }
    let server_key = if key_in_data {
        "in this backup (the data directory keeps its own server key)".to_string()
    } else {
        format!(
            "outside the data directory, not in this backup{}: back the key file up apart; the restored data directory needs the same key file (serve --key-file, or systemd LoadCredential server-key)",
            match &opts.key_file {
                Some(p) => format!(" (key file {})", p.display()),
                None => String::new(),
            }
        )
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        tool: format!("tellestrek {}", env!("CARGO_PKG_VERSION")),
        taken_from: if opts.online {
            "running server"
        } else {
            "stopped server"
        }
        .to_string(),
        taken_in_period,
        includes,
        server_key,
        raw_included: opts.include_raw,
        raw_periods: snapshot.raw_periods.iter().map(|p| p.to_string()).collect(),
        policy_fingerprint: snapshot.regimes.as_deref().map(sha256_hex),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::BadManifest(e.to_string()))?;
    write_private(&tmp.path().join(MANIFEST_FILE), &json)?;
    sync_dir(tmp.path())?;
    // Into place: `rename` replaces an empty directory, and refuses a non-empty one.
    let done = tmp.keep();
    std::fs::rename(&done, to).map_err(|e| {
        let _ = std::fs::remove_dir_all(&done);
        io(to)(e)
    })?;
    sync_dir(parent)?;
    Ok(manifest)
}

/// What a restore did, for the command's message.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The manifest of the backup restored.
    pub manifest: Manifest,
    /// Periods marked purged because their raw data was not in the backup.
    pub marked_purged: Vec<Period>,
}

/// Restores the backup in `from` into the data directory `data`, which must be absent or empty
/// unless `force` (then it is replaced). Every file is checked against the manifest first; the
/// new data directory is written beside `data` and renamed into place only when complete, so on
/// any error `data` is as it was.
///
/// `today` decides what happens to periods whose raw data the backup left out: one that has
/// ended is marked purged (no release is drawn from it any more), one still running keeps
/// collecting from zero. A backup *with* raw data of periods that have ended is refused unless
/// `no_release_since` (the operator's word that the old server drew nothing after the backup):
/// otherwise a release could be drawn twice.
pub fn restore(
    from: &Path,
    data: &Path,
    force: bool,
    today: time::Date,
    no_release_since: bool,
) -> Result<Restored, BackupError> {
    let manifest = read_manifest(from)?;
    if manifest.raw_included && !no_release_since {
        let ended: Vec<String> = manifest
            .raw_periods
            .iter()
            .filter(|p| p.parse::<Period>().is_ok_and(|p| p.end() <= today))
            .cloned()
            .collect();
        if !ended.is_empty() {
            return Err(BackupError::RawOfEndedPeriods(ended));
        }
    }
    let trees = verified_trees(from, &manifest)?;
    // A data directory that is a symlink (to an encrypted volume) is restored where it points.
    let data = match std::fs::symlink_metadata(data) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(data).map_err(io(data))?,
        _ => std::path::absolute(data).map_err(io(data))?,
    };
    let data = data.as_path();
    let replace = !is_empty_or_absent(data)?;
    if replace && !force {
        return Err(BackupError::DataNotEmpty(data.to_path_buf()));
    }
    if replace && store::in_use(data)? {
        return Err(BackupError::DataInUse(data.to_path_buf()));
    }
    let parent = data.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tellestrek-restore-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let regimes = match manifest.files.contains_key(REGIMES) {
        true => Some(std::fs::read(from.join(REGIMES)).map_err(io(&from.join(REGIMES)))?),
        false => None,
    };
    store::write_snapshot(tmp.path(), &trees, regimes.as_deref())?;
    let mut marked_purged = Vec::new();
    {
        // Opening it proves it opens (and publishes a batch staged before the copy, as a
        // start would).
        let restored = Store::open(tmp.path())?;
        if !manifest.raw_included {
            for p in manifest
                .raw_periods
                .iter()
                .filter_map(|p| p.parse::<Period>().ok())
            {
                // A period still running keeps collecting, from zero: supporters are not
                // turned away for the rest of it, and its releases count what is logged after
                // the restore (docs/backup.md says so). One that has ended (in its grace days
                // too) would be released from missing data.
                if p.end() > today {
                    continue;
                }
                if restored.period_state(p)? != Some(PeriodState::Purged) {
                    restored.set_period_state(p, PeriodState::Purged)?;
                    marked_purged.push(p);
                }
            }
        }
        restored.flush()?;
    }
    sync_dir(tmp.path())?;
    let fresh = tmp.keep();
    let result = (|| {
        if replace {
            let old = tempfile::Builder::new()
                .prefix(".tellestrek-replaced-")
                .tempdir_in(parent)
                .map_err(io(parent))?
                .keep();
            std::fs::rename(data, &old).map_err(io(data))?;
            std::fs::rename(&fresh, data).map_err(io(data))?;
            sync_dir(parent)?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&fresh, data).map_err(io(data))?;
        }
        sync_dir(parent)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&fresh);
    }
    result?;
    Ok(Restored {
        manifest,
        marked_purged,
    })
}

/// Reads and checks the manifest of the backup in `from`.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::NoManifest(from.to_path_buf()));
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| BackupError::BadManifest(e.to_string()))?;
    if manifest.format != FORMAT_VERSION {
        return Err(BackupError::BadManifest(format!(
            "format {} is not one this tellestrek reads (it reads format {FORMAT_VERSION})",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Checks every file of the backup against the manifest (none missing, none extra, every
/// checksum right) and decodes the trees.
fn verified_trees(from: &Path, manifest: &Manifest) -> Result<Vec<TreeCopy>, BackupError> {
    let mut present = Vec::new();
    list_files(from, from, &mut present)?;
    for rel in &present {
        if rel != MANIFEST_FILE && !manifest.files.contains_key(rel) {
            return Err(BackupError::Unlisted(rel.clone()));
        }
    }
    let mut trees = Vec::new();
    for (rel, sum) in &manifest.files {
        if !present.contains(rel) {
            return Err(BackupError::Missing(rel.clone()));
        }
        let path = from.join(rel);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if &sha256_hex(&bytes) != sum {
            return Err(BackupError::Checksum(rel.clone()));
        }
        if rel == REGIMES {
            continue;
        }
        let bad = |detail: &str| BackupError::BadTree {
            file: rel.clone(),
            detail: detail.to_string(),
        };
        let (database, name) = parse_tree_file(rel).ok_or_else(|| bad("unknown file name"))?;
        let entries = decode_tree(&bytes).map_err(bad)?;
        trees.push(TreeCopy {
            database,
            name,
            entries,
        });
    }
    Ok(trees)
}

/// Paths of every file under `dir`, relative to `root`, with `/` between parts.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), BackupError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        }
    }
    Ok(())
}

/// The file of a tree: `main/NAME.tree` or `raw/PERIOD/NAME.tree`; a name outside
/// `[A-Za-z0-9_-]` is written as `x-` and its hex.
fn tree_file(database: Database, name: &[u8]) -> String {
    let plain = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        && !name.starts_with(b"x-");
    let stem = if plain {
        String::from_utf8_lossy(name).into_owned()
    } else {
        format!("x-{}", data_encoding::HEXLOWER.encode(name))
    };
    match database {
        Database::Main => format!("main/{stem}.tree"),
        Database::Raw(p) => format!("raw/{p}/{stem}.tree"),
    }
}

/// The database and tree name of a tree file's relative path (the inverse of [`tree_file`]).
fn parse_tree_file(rel: &str) -> Option<(Database, Vec<u8>)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let (database, file) = match parts.as_slice() {
        ["main", file] => (Database::Main, *file),
        ["raw", period, file] => (Database::Raw(period.parse().ok()?), *file),
        _ => return None,
    };
    let stem = file.strip_suffix(".tree")?;
    let name = match stem.strip_prefix("x-") {
        Some(hex) => data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?,
        None => stem.as_bytes().to_vec(),
    };
    (!name.is_empty()).then_some((database, name))
}

/// A tree's entries, key then value, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A tree's entries as a `.tree` file (see the module doc).
fn encode_tree(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = TREE_MAGIC.to_vec();
    for (k, v) in entries {
        for part in [k, v] {
            // sled keys and values are far below 4 GiB (a release is a few KiB).
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The entries of a `.tree` file.
fn decode_tree(bytes: &[u8]) -> Result<Entries, &'static str> {
    let mut rest = bytes
        .strip_prefix(TREE_MAGIC.as_slice())
        .ok_or("it does not start with the tree header")?;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, &'static str> {
        if rest.len() < 4 {
            return Err("it ends inside an entry");
        }
        let (len, tail) = rest.split_at(4);
        let mut n = [0u8; 4];
        n.copy_from_slice(len);
        let n = u32::from_be_bytes(n) as usize;
        if tail.len() < n {
            return Err("it ends inside an entry");
        }
        let (part, tail) = tail.split_at(n);
        *rest = tail;
        Ok(part.to_vec())
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        entries.push((k, v));
    }
    Ok(entries)
}

/// Whether `dir` does not exist or is an empty directory.
fn is_empty_or_absent(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Creates `dir` (and missing parents inside the backup) with mode 0700.
fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Writes a new file with mode 0600 and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Syncs a directory's entries (after files were created or renamed in it).
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_files_round_trip_their_names_and_entries() {
        let entries = vec![
            (b"k".to_vec(), b"".to_vec()),
            (vec![0, 255], b"{\"a\":1}".to_vec()),
        ];
        assert_eq!(decode_tree(&encode_tree(&entries)).unwrap(), entries);
        for name in [&b"releases"[..], b"__sled__default", b"x-odd", b"a b/c"] {
            let p: Period = "2026-11".parse().unwrap();
            for db in [Database::Main, Database::Raw(p)] {
                let file = tree_file(db, name);
                assert_eq!(parse_tree_file(&file), Some((db, name.to_vec())), "{file}");
            }
        }
    }

    #[test]
    fn a_restore_never_replaces_a_data_directory_a_running_server_holds() {
        let dir = tempfile::tempdir().unwrap();
        let source = Store::open(&dir.path().join("source")).unwrap();
        let from = dir.path().join("backup");
        take(&source, &from, &Options::default()).unwrap();
        // A "running server": the store is open, and holds a value the restore must not lose.
        let live_dir = dir.path().join("live");
        let live = Store::open(&live_dir).unwrap();
        live.set_meta_text("probe", "kept").unwrap();
        let today = time::macros::date!(2026 - 11 - 26);
        let e = restore(&from, &live_dir, true, today, false).unwrap_err();
        assert!(matches!(e, BackupError::DataInUse(_)), "{e}");
        assert!(e.to_string().contains("stop the server"), "{e}");
        assert_eq!(live.meta_text("probe").unwrap().as_deref(), Some("kept"));
        // Stopped, the same directory is replaced.
        drop(live);
        let restored = restore(&from, &live_dir, true, today, false);
        assert!(restored.is_ok(), "{:?}", restored.err());
        assert!(!store::in_use(&live_dir).unwrap());
    }

    #[test]
    fn a_backup_error_for_the_log_names_no_path() {
        let typed = Path::new("/srv/typed-by-an-admin/backup");
        let errors = [
            io(typed)(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
            // As tempfile words it: the path inside the io::Error's text.
            io(typed)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("No such file (os error 2) at path {:?}", typed.join(".tmp")),
            )),
            BackupError::TargetNotEmpty(typed.to_path_buf()),
            BackupError::InsideData(typed.to_path_buf()),
            BackupError::RelativeTarget("typed-by-an-admin".into()),
        ];
        for e in errors {
            assert!(
                e.to_string().contains("typed-by-an-admin"),
                "the answer names it"
            );
            let logged = e.log_detail();
            assert!(!logged.contains("typed-by-an-admin"), "{logged}");
            assert!(!logged.is_empty());
        }
    }

    #[test]
    fn a_truncated_tree_file_is_refused() {
        let bytes = encode_tree(&[(b"key".to_vec(), b"value".to_vec())]);
        assert!(decode_tree(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_tree(b"nonsense").is_err());
    }
}
