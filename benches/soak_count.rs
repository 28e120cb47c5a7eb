//! The soak test's offline count: opens a stopped server's data directory with `Store::open`
//! and prints, per organisation, how many contacts its raw cells hold for each period given.
//! `benches/soak.sh` compares these with the contacts its clients got a 201 for, so it can say
//! that every acknowledged tick was counted, and counted once.
//!
//! ```sh
//! cargo bench --profile dev --bench soak_count -- DATA_DIR 2026-10 2026-11
//! ```
//!
//! Prints one line per period and organisation: `PERIOD ORG CONTACTS`. This is the same hook
//! the crash test uses (`Store::cells_of` after the server has stopped): a bench target, never
//! built into the binary, and nothing the server serves. It reads nothing while a server runs
//! (sled locks the directory, and the open fails).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use tellestrek::domain::Period;
use tellestrek::store::Store;

fn main() -> ExitCode {
    // `cargo bench` adds `--bench` to a bench binary's arguments; only the others are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some((dir, periods)) = args.split_first() else {
        eprintln!("usage: soak_count DATA_DIR PERIOD...");
        return ExitCode::from(2);
    };
    let store = match Store::open(&PathBuf::from(dir)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak_count: cannot open {dir} (is the server still running?): {e}");
            return ExitCode::FAILURE;
        }
    };
    for text in periods {
        let period: Period = match text.parse() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("soak_count: `{text}` is not a period: {e}");
                return ExitCode::from(2);
            }
        };
        let cells = match store.cells_of(period) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("soak_count: reading the cells of {text}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut per_org: BTreeMap<String, u64> = BTreeMap::new();
        for (key, n) in cells {
            *per_org.entry(key.org).or_default() += n;
        }
        for (org, n) in per_org {
            println!("{text} {org} {n}");
        }
    }
    ExitCode::SUCCESS
}
