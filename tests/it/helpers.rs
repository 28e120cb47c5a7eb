//! Shared fixtures: an app on a temporary data directory with a fixed clock, requests through
//! the real router with `oneshot`, and a started real binary for process-level tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tellestrek::clock::FixedClock;
use tellestrek::dp::{NoiseSource, OpenDpNoise, ZeroNoise};
use tellestrek::policy::Policy;
use tellestrek::server::app;
use tellestrek::service::Service;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt;

/// The admin token every fixture starts with.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// The instant fixtures stand on: Monday 23 November 2026.
pub const NOW: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

/// An app over a fresh data directory, driven through the real router.
pub struct TestApp {
    pub svc: Service,
    pub router: Router,
    pub clock: Arc<FixedClock>,
    pub dir: TempDir,
}

impl TestApp {
    /// The built-in policy at [`NOW`].
    pub fn new() -> TestApp {
        TestApp::with_policy(Policy::builtin())
    }

    /// A given policy at [`NOW`], with OpenDP noise.
    pub fn with_policy(policy: Policy) -> TestApp {
        TestApp::build(policy, Arc::new(OpenDpNoise))
    }

    /// The built-in policy at [`NOW`] with no noise, for exact checks of aggregation.
    pub fn zero_noise() -> TestApp {
        TestApp::build(Policy::builtin(), Arc::new(ZeroNoise))
    }

    /// An app on a fresh directory with the given policy and noise.
    pub fn build(policy: Policy, noise: Arc<dyn NoiseSource>) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock::new(NOW));
        let (svc, created) = Service::open(dir.path(), policy, clock.clone(), Some(ADMIN)).unwrap();
        assert!(
            created.is_some(),
            "an empty data directory creates the admin token"
        );
        let svc = svc.with_noise(noise);
        TestApp {
            router: app(svc.clone()),
            svc,
            clock,
            dir,
        }
    }

    /// Logs `count` contacts as `token` in `unit` of `org`, with the first value of every
    /// dimension except those in `tags`.
    pub async fn tick(
        &self,
        token: &str,
        org: &str,
        unit: &str,
        tags: &[(&str, &str)],
        count: u32,
    ) {
        let mut body = tick_body();
        body["org"] = json!(org);
        body["unit"] = json!(unit);
        body["count"] = json!(count);
        for (d, v) in tags {
            body["tags"][*d] = json!(v);
        }
        let (s, v) = self
            .call("POST", "/api/v1/ticks", Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Moves the clock to the given instant.
    pub fn at(&self, when: OffsetDateTime) {
        self.clock.set(when);
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.raw(method, path, token, bytes, "application/json")
            .await
    }

    /// Sends raw body bytes with a given content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", content_type)
                .body(Body::from(b))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, json)
    }

    /// Creates a token of `role` (scoped to `org` if given) as admin; returns its clear text.
    pub async fn token(&self, role: &str, org: Option<&str>) -> String {
        let mut body = json!({"role": role});
        if let Some(o) = org {
            body["org"] = json!(o);
        }
        let (status, v) = self
            .call("POST", "/api/v1/tokens", Some(ADMIN), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Every raw byte of the counting trees (cells, supporter counters, periods, tokens).
    pub fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.svc.store().raw_snapshot().unwrap()
    }

    /// The sum of all raw cells of a period (read in-process; no interface serves this).
    pub fn total(&self, period: &str) -> u64 {
        self.svc
            .store()
            .cells_of(period.parse().unwrap())
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }
}

/// A valid tick body for helse-vestfjord/akuttmottak with the first value of every dimension.
pub fn tick_body() -> Value {
    let p = Policy::builtin();
    let tags: serde_json::Map<String, Value> = p
        .dimensions
        .iter()
        .map(|d| (d.id.clone(), json!(d.values[0].id)))
        .collect();
    json!({"org": "helse-vestfjord", "unit": "akuttmottak", "tags": tags})
}

/// The built-in policy with a higher per-supporter cap, written to `dir`, for load and crash
/// tests that send many ticks from few tokens.
pub fn roomy_policy_file(dir: &Path) -> std::path::PathBuf {
    let text = tellestrek::policy::DEFAULT_POLICY.replace(
        "max_per_supporter_per_period = 40",
        "max_per_supporter_per_period = 10000",
    );
    assert_ne!(text, tellestrek::policy::DEFAULT_POLICY);
    let path = dir.join("roomy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The real binary, started by a test.
pub struct Binary {
    pub child: Child,
    pub base: String,
    /// Everything it printed on standard output before it started listening.
    pub banner: String,
    /// The binary's `TMPDIR`, owned by the test: after a graceful stop it must be empty, so the
    /// suite leaves the machine's `/tmp` as it found it.
    pub tmp: TempDir,
}

/// A `TMPDIR` for a started binary, so that what it leaves behind can be seen (and is removed).
pub fn binary_tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("tellestrek-test-tmp-")
        .tempdir()
        .unwrap()
}

/// The names of what is left in a directory (empty when a binary cleaned up after itself).
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

impl Binary {
    /// Starts `tellestrek serve` on port 0 and waits until it listens; without `policy`, with
    /// the built-in policy written beside the data directory (`serve` needs a file).
    pub fn serve(data: &Path, policy: Option<&Path>, admin: Option<&str>) -> Binary {
        let mut cmd = Binary::serve_command(data, policy, "2026-11-23T10:00:00Z");
        if let Some(a) = admin {
            cmd.env("TELLESTREK_ADMIN_TOKEN", a);
        }
        Binary::start(cmd, None)
    }

    /// The command [`Binary::serve`] runs, at instant `now`, for tests that add to it.
    pub fn serve_command(data: &Path, policy: Option<&Path>, now: &str) -> Command {
        let builtin = data.with_extension("policy.toml");
        let policy = match policy {
            Some(p) => p,
            None => {
                if !builtin.exists() {
                    std::fs::write(&builtin, tellestrek::policy::DEFAULT_POLICY).unwrap();
                }
                &builtin
            }
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tellestrek"));
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--policy")
            .arg(policy);
        cmd.env_remove("TELLESTREK_ADMIN_TOKEN")
            .env_remove("TELLESTREK_POLICY")
            .env_remove(tellestrek::fault::ABORT_AT_ENV)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("TELLESTREK_NOW", now)
            .env("TELLESTREK_LOG", "warn");
        cmd
    }

    /// Starts `cmd` with a `TMPDIR` of its own and waits until it listens. With `output`, all
    /// it prints on standard output and error is appended there (for tests that read the log);
    /// otherwise standard error goes to the test's.
    pub fn start(mut cmd: Command, output: Option<Arc<Mutex<String>>>) -> Binary {
        let tmp = binary_tmp();
        cmd.env("TMPDIR", tmp.path()).stdout(Stdio::piped());
        cmd.stderr(if output.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let child = cmd.spawn().unwrap();
        // Owned by `Binary` from here on, so a panic below still kills it (Drop).
        let mut bin = Binary {
            child,
            base: String::new(),
            banner: String::new(),
            tmp,
        };
        let keep = |out: &Option<Arc<Mutex<String>>>, line: &str| {
            if let Some(o) = out {
                o.lock().unwrap().push_str(line);
            }
        };
        if let (Some(err), Some(out)) = (bin.child.stderr.take(), output.clone()) {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let line = line.unwrap_or_default();
                    out.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        let mut reader = BufReader::new(bin.child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the binary exited before listening: {}",
                bin.banner
            );
            bin.banner.push_str(&line);
            keep(&output, &line);
            if let Some(rest) = line.split("listening on ").nth(1) {
                bin.base = rest.split_whitespace().next().unwrap().to_string();
                // Keep draining stdout so the child never blocks on a full pipe.
                std::thread::spawn(move || {
                    for line in reader.lines() {
                        keep(&output, &format!("{}\n", line.unwrap_or_default()));
                    }
                });
                return bin;
            }
        }
    }
}

impl Drop for Binary {
    /// A test that fails midway must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Sends SIGKILL and reaps the process.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for a clean exit; the binary's `TMPDIR` must then be empty.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = terminate(&mut self.child);
        let left = leftovers(self.tmp.path());
        assert!(left.is_empty(), "a graceful stop left {left:?} in TMPDIR");
        status
    }
}

/// Sends SIGTERM to a child and waits for it to exit.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    child.wait().unwrap()
}

/// A reqwest client for talking to a started binary.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Creates a token on a running binary.
pub async fn remote_token(
    c: &reqwest::Client,
    base: &str,
    admin: &str,
    role: &str,
    org: Option<&str>,
) -> String {
    let mut body = json!({"role": role});
    if let Some(o) = org {
        body["org"] = json!(o);
    }
    let r = c
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every file below `dir`, for tests that scan what a data directory holds.
pub fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out)
        } else {
            out.push(p)
        }
    }
}

/// Every key, secret and pseudonym a stopped server's data directory holds: the server and
/// signing keys, and from the raw store the token hashes, pseudonyms (the tail of load keys),
/// period secrets and idempotency hashes; for scans of logs and metrics.
pub fn stored_secrets(data: &Path) -> Vec<Vec<u8>> {
    let store = tellestrek::store::Store::open(data).unwrap();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for name in ["server_key", "signing_key"] {
        secrets.extend(store.meta_bytes(name).unwrap());
    }
    for (k, v) in store.raw_snapshot().unwrap() {
        if k.len() >= 32 {
            secrets.push(k[k.len() - 32..].to_vec());
        }
        if v.len() >= 32 {
            secrets.push(v);
        }
    }
    secrets
}

/// Every encoding of `bytes` a log line or a metric could carry.
pub fn encodings(bytes: &[u8]) -> Vec<String> {
    use data_encoding::{BASE64, BASE64URL_NOPAD, HEXLOWER};
    vec![
        HEXLOWER.encode(bytes),
        HEXLOWER.encode(bytes).to_uppercase(),
        BASE64.encode(bytes),
        BASE64URL_NOPAD.encode(bytes),
        format!("{bytes:?}"),
    ]
}
