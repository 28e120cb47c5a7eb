//! The README's walk-through (issue 8) runs as written against the demo: the demo binary is
//! started on port 0 with an env file, the ```sh blocks between `<!-- walkthrough:start -->`
//! and `<!-- walkthrough:end -->` run in order in one `bash -euo pipefail` with that file
//! sourced, and the key answers are checked. Needs `bash`, `curl` and `python3` (`.ci/run`
//! installs curl when it is missing).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::helpers::{binary_tmp, leftovers, terminate};

/// The README, read at test time so an edit to it needs no rebuild to be checked.
fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The ```sh blocks of the README's walk-through, in order.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let (_, rest) = readme
        .split_once("<!-- walkthrough:start -->")
        .expect("the README marks its walk-through with <!-- walkthrough:start -->");
    let (section, _) = rest
        .split_once("<!-- walkthrough:end -->")
        .expect("the README ends its walk-through with <!-- walkthrough:end -->");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an unclosed ```sh block in the walk-through"
    );
    blocks
}

/// The demo, killed if a test fails before it is stopped gracefully.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_walkthrough_blocks_are_found_in_order() {
    let blocks = walkthrough_blocks(&readme());
    assert!(blocks.len() >= 6, "{blocks:?}");
    let all = blocks.concat();
    for step in [
        "/api/v1/policy",
        "/api/v1/tokens",
        "/api/v1/ticks",
        "Idempotency-Key",
        "/api/v1/periods",
        "/release",
        "format=csv",
        "/api/v1/budget",
        "/api/v1/signing-key",
        "tellestrek verify",
    ] {
        assert!(all.contains(step), "the walk-through shows {step}");
    }
    assert!(
        !all.contains("8080") && !all.contains("2026-"),
        "the walk-through uses the demo's variables, not a fixed port or period"
    );
}

#[test]
fn the_readme_walkthrough_runs_as_written_against_the_demo() {
    let tmp = binary_tmp();
    let work = tempfile::tempdir().unwrap();
    let env_file = work.path().join("demo.env");
    let child = Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(["demo", "--listen", "127.0.0.1:0", "--env-file"])
        .arg(&env_file)
        .env("TELLESTREK_LOG", "warn")
        .env("TELLESTREK_NOW", "2026-11-23T10:00:00Z")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Running(Some(child));
    let stdout = demo.0.as_mut().unwrap().stdout.take().unwrap();
    let mut out = BufReader::new(stdout);
    let mut banner = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "demo exited: {banner}"
        );
        banner.push_str(&line);
        if line.contains("listening on ") {
            break;
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});

    // The env file: what the demo printed, readable by its owner only.
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        banner.contains(&env),
        "the printed lines are the file's:\n{banner}"
    );
    assert!(banner.contains(&format!("source '{}'", env_file.display())));
    for var in [
        "TELLESTREK_URL",
        "ADMIN",
        "COORDINATOR",
        "LEADER",
        "RESEARCHER",
        "SUPPORTER",
        "ORG",
        "OTHER_ORG",
        "PERIOD",
        "PREVIOUS_PERIOD",
        "CLOSED_PERIOD",
    ] {
        assert!(env.contains(&format!("export {var}=")), "{var} in\n{env}");
    }
    assert!(env.contains("export PERIOD=2026-11\n"), "{env}");
    assert!(env.contains("export CLOSED_PERIOD=2026-10\n"), "{env}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the env file holds tokens");
    }

    let blocks = walkthrough_blocks(&readme());
    let mut script = format!("source '{}'\n", env_file.display());
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(b);
        script.push_str(&format!("echo '== walkthrough block {} ok'\n", i + 1));
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tellestrek"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let passed = stdout.matches("== walkthrough block ").count();
    assert!(
        run.status.success(),
        "walk-through block {} failed ({}):\n{stdout}\n{stderr}",
        passed + 1,
        run.status
    );
    assert_eq!(passed, blocks.len(), "{stdout}");
    for expected in [
        r#"{"status":"ok"}"#,
        r#""accepted":1"#,
        "idempotent-replayed: true",
        r#""accepted":3"#,
        "\n401\n",
        "\n403\n",
        r#""state":"released""#,
        "OK: export.json holds",
        "changed.json refused, as it should be",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(stderr.contains("NOT VERIFIED"), "{stderr}");
    for saved in ["export.json", "releases.csv", "changed.json"] {
        assert!(work.path().join(saved).is_file(), "{saved}");
    }

    // Stopped as an operator would (SIGTERM), the demo leaves nothing in its TMPDIR.
    let mut child = demo.0.take().unwrap();
    assert!(terminate(&mut child).success());
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "the demo left {left:?} behind");
}
