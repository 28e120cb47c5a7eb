//! Connections and edges (issue 7): slow clients are dropped while ticks keep being answered,
//! SIGTERM under load exits within 10 s with every acknowledged tick kept, every answer carries
//! the security headers, and malformed paths and queries get JSON errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tellestrek::policy::Policy;
use tellestrek::server::{HEADER_READ_TIMEOUT, SHUTDOWN_GRACE};
use tellestrek::store::Store;
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::helpers::{ADMIN, Binary, TestApp, client, remote_token, roomy_policy_file};

const REMOTE_ADMIN: &str = "conn-test-admin-token-0123456789ab";

// ---------------------------------------------------------------------------------------------
// Headers and malformed input, through the real router.
// ---------------------------------------------------------------------------------------------

/// Sends a request through the router; returns status, headers and body as JSON.
async fn send(
    app: &TestApp,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

fn header<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

/// Every answer carries nosniff, no-referrer, DENY and the strict CSP.
fn assert_security_headers(h: &axum::http::HeaderMap) {
    assert_eq!(header(h, "x-content-type-options"), "nosniff");
    assert_eq!(header(h, "referrer-policy"), "no-referrer");
    assert_eq!(header(h, "x-frame-options"), "DENY");
    assert_eq!(
        header(h, "content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
}

#[tokio::test]
async fn every_answer_has_security_headers_and_tokens_and_numbers_are_never_cached() {
    let app = TestApp::new();
    // The token-creation answer shows a token once: it must never be stored by a cache.
    let (s, h, v) = send(
        &app,
        "POST",
        "/api/v1/tokens",
        Some(ADMIN),
        Some(json!({"role": "researcher"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_security_headers(&h);
    assert_eq!(header(&h, "cache-control"), "no-store");
    let researcher = v["token"].as_str().unwrap().to_string();

    // Releases (JSON and CSV), the ledger, errors and 404s: no-store as well.
    for (method, uri, token) in [
        ("GET", "/api/v1/releases", Some(researcher.as_str())),
        (
            "GET",
            "/api/v1/releases?format=csv",
            Some(researcher.as_str()),
        ),
        ("GET", "/api/v1/budget", Some(researcher.as_str())),
        ("GET", "/api/v1/tokens", Some(ADMIN)),
        ("GET", "/api/v1/policy", None),
        ("GET", "/no/such/page", None),
        ("PUT", "/api/v1/ticks", None),
    ] {
        let (s, h, _) = send(&app, method, uri, token, None).await;
        assert_security_headers(&h);
        assert_eq!(
            header(&h, "cache-control"),
            "no-store",
            "{method} {uri} ({s})"
        );
    }

    // The public answers may be cached (the key) or revalidated (the probe), never no-store.
    let (s, h, _) = send(&app, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_security_headers(&h);
    assert_eq!(header(&h, "cache-control"), "no-cache");
    let (s, h, _) = send(&app, "GET", "/api/v1/signing-key", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_security_headers(&h);
    assert_eq!(header(&h, "cache-control"), "public, max-age=300");
}

/// Asserts a JSON error of `status` and `code` whose message names `field`.
fn assert_json_error(s: StatusCode, v: &Value, status: StatusCode, code: &str, field: &str) {
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "message should name {field}: {v}");
}

#[tokio::test]
async fn invalid_utf8_in_a_path_or_query_gets_a_json_error_and_changes_nothing() {
    let app = TestApp::new();
    let researcher = app.token("researcher", None).await;
    let before = app.snapshot();

    // Path parameters: the token to revoke, the period to release.
    let (s, h, v) = send(&app, "DELETE", "/api/v1/tokens/%FF", Some(ADMIN), None).await;
    assert_json_error(s, &v, StatusCode::BAD_REQUEST, "invalid_path", "`id`");
    assert_security_headers(&h);
    let (s, _, v) = send(
        &app,
        "POST",
        "/api/v1/periods/%C3%28/release",
        Some(ADMIN),
        None,
    )
    .await;
    assert_json_error(s, &v, StatusCode::BAD_REQUEST, "invalid_path", "`period`");

    // Query values and names.
    let (s, _, v) = send(
        &app,
        "GET",
        "/api/v1/releases?org=%FF",
        Some(&researcher),
        None,
    )
    .await;
    assert_json_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query", "`org`");
    let (s, _, v) = send(&app, "GET", "/api/v1/policy?lang=en%FE", Some(ADMIN), None).await;
    assert_json_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query", "`lang`");
    let (s, _, v) = send(&app, "GET", "/api/v1/policy?%FF=en", Some(ADMIN), None).await;
    assert_json_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query", "name");

    // Valid percent-encoded UTF-8 is still read as text ("ø" is not an org here).
    let (s, _, v) = send(
        &app,
        "GET",
        "/api/v1/releases?org=%C3%B8",
        Some(&researcher),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "unknown_org", "{v}");

    assert_eq!(before, app.snapshot(), "a refused request changes nothing");
}

// ---------------------------------------------------------------------------------------------
// The real binary: slow clients and shutdown.
// ---------------------------------------------------------------------------------------------

/// The tick body of client `n`: each client has a cell of its own (unit x duration), so counts
/// are checked per client, as in `crash.rs`.
fn client_tick(policy: &Policy, n: usize) -> Value {
    let org = policy.org("helse-vestfjord").unwrap();
    let unit = &org.units[n % org.units.len()].id;
    let varighet = &policy.dimension("varighet").unwrap().values[n / org.units.len()].id;
    let mut tags: serde_json::Map<String, Value> = policy
        .dimensions
        .iter()
        .map(|d| (d.id.clone(), json!(d.values[0].id)))
        .collect();
    tags.insert("varighet".into(), json!(varighet));
    json!({"org": "helse-vestfjord", "unit": unit, "tags": tags})
}

/// The raw count of client `n`'s cell in the store at `data` (the server stopped).
fn stored_counts(data: &std::path::Path, policy: &Policy, clients: usize) -> Vec<u64> {
    let store = Store::open(data).unwrap();
    let cells = store.cells_of("2026-11".parse().unwrap()).unwrap();
    let org = policy.org("helse-vestfjord").unwrap();
    (0..clients)
        .map(|n| {
            let unit = &org.units[n % org.units.len()].id;
            let varighet = &policy.dimension("varighet").unwrap().values[n / org.units.len()].id;
            cells
                .iter()
                .filter(|(k, _)| &k.unit == unit && k.tags["varighet"] == *varighet)
                .map(|(_, v)| v)
                .sum()
        })
        .collect()
}

/// `clients` tasks each send `per_client` ticks one after the other; returns every latency.
async fn timed_ticks(
    c: &reqwest::Client,
    base: &str,
    tokens: &[String],
    policy: &Policy,
    per_client: usize,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for (n, token) in tokens.iter().enumerate() {
        let (c, url, token, body) = (
            c.clone(),
            format!("{base}/api/v1/ticks"),
            token.clone(),
            client_tick(policy, n),
        );
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p99(times: &mut [Duration]) -> Duration {
    times.sort();
    times[(times.len() * 99).div_ceil(100) - 1]
}

/// The kinds of slow client the slowloris test holds open.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slow {
    /// Sends a request head one byte at a time and never finishes it.
    Drip,
    /// Connects and sends nothing.
    Silent,
    /// Sends a whole head with a valid token, then the body one byte at a time.
    Body,
    /// Makes one request, then keeps the connection open and idle.
    Idle,
}

/// What a slow client saw: how long until the server closed, and what it answered.
struct SlowEnd {
    kind: Slow,
    closed_after: Option<Duration>,
    answer: String,
}

/// Writes all of `bytes` (tokio's `io-util` is not among the features this crate builds with).
async fn send_all(s: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there; `Ok(0)` when the peer closed.
async fn recv(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Runs one slow client for at most `limit`; reports when the server closed the connection.
async fn slow_client(addr: String, kind: Slow, token: String, limit: Duration) -> SlowEnd {
    let start = Instant::now();
    let s = TcpStream::connect(&addr).await.unwrap();
    let mut drip: Vec<u8> = match kind {
        Slow::Drip => {
            let mut head = b"POST /api/v1/ticks HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
            head.extend(std::iter::repeat_n(b'a', 4000));
            head
        }
        Slow::Silent | Slow::Idle => Vec::new(),
        Slow::Body => {
            let head = format!(
                "POST /api/v1/ticks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
            );
            send_all(&s, head.as_bytes()).await.unwrap();
            vec![b' '; 4000]
        }
    };
    if kind == Slow::Idle {
        send_all(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
    }
    drip.reverse();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed_after = None;
    while start.elapsed() < limit {
        tokio::select! {
            r = recv(&s, &mut buf) => match r {
                Ok(0) | Err(_) => {
                    closed_after = Some(start.elapsed());
                    break;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(b) = drip.pop()
                    && send_all(&s, &[b]).await.is_err()
                {
                    closed_after = Some(start.elapsed());
                    break;
                }
            }
        }
    }
    SlowEnd {
        kind,
        closed_after,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// Issue 7: 200 slow connections (slowloris on the head and on the body, silent, idle) must not
/// starve ticks, and the server must close each of them after its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_does_not_starve_ticks_and_slow_connections_are_closed() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy_path = roomy_policy_file(dir.path());
    let policy = Policy::builtin();
    let server = Binary::serve(&data, Some(&policy_path), Some(REMOTE_ADMIN));
    let base = server.base.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let c = client();
    let mut tokens = Vec::new();
    for _ in 0..CLIENTS + 1 {
        tokens.push(
            remote_token(
                &c,
                &base,
                REMOTE_ADMIN,
                "supporter",
                Some("helse-vestfjord"),
            )
            .await,
        );
    }
    let slow_token = tokens.pop().unwrap();

    // Warm up, then tick p99 at rest.
    timed_ticks(&c, &base, &tokens, &policy, 10).await;
    let mut rest = timed_ticks(&c, &base, &tokens, &policy, PER_CLIENT).await;
    let rest_p99 = p99(&mut rest);

    // 200 slow connections, then the same ticks while they are held open.
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(8);
    let kinds = [
        (Slow::Drip, 90),
        (Slow::Silent, 60),
        (Slow::Body, 40),
        (Slow::Idle, 10),
    ];
    let mut slow = Vec::new();
    for (kind, n) in kinds {
        for _ in 0..n {
            slow.push(tokio::spawn(slow_client(
                addr.clone(),
                kind,
                slow_token.clone(),
                limit,
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut loaded = timed_ticks(&c, &base, &tokens, &policy, PER_CLIENT).await;
    let loaded_p99 = p99(&mut loaded);
    let ticks_took = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "slowloris: tick p50/p99 at rest {:.2}/{:.2} ms, with 200 slow connections {:.2}/{:.2} ms ({} ticks each, {:.1} s)",
        ms(rest[rest.len() / 2]),
        ms(rest_p99),
        ms(loaded[loaded.len() / 2]),
        ms(loaded_p99),
        rest.len(),
        ticks_took.as_secs_f64()
    );
    assert!(
        ticks_took + Duration::from_secs(1) < HEADER_READ_TIMEOUT,
        "the ticks must be measured while the slow connections are open"
    );
    // Not a speed target (benches/README.md has the figures): only "not starved".
    assert!(
        loaded_p99 <= rest_p99 * 3 + Duration::from_millis(50),
        "tick p99 {loaded_p99:?} with slow clients against {rest_p99:?} at rest"
    );

    // Each slow connection is closed by the server after its timeout (10 s), not before.
    for t in slow {
        let end = t.await.unwrap();
        let after = end
            .closed_after
            .unwrap_or_else(|| panic!("{:?} connection still open after {limit:?}", end.kind));
        assert!(
            after >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
            "{:?} closed after {after:?}, before the timeout",
            end.kind
        );
        match end.kind {
            Slow::Body => assert!(
                end.answer.starts_with("HTTP/1.1 408") && end.answer.contains("body_timeout"),
                "a slow body gets a JSON 408: {}",
                end.answer
            ),
            Slow::Idle => assert!(end.answer.starts_with("HTTP/1.1 200"), "{}", end.answer),
            Slow::Drip | Slow::Silent => {}
        }
    }
    // The server still serves, and no slow client's tick was counted.
    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(server.terminate().success());
    let counts = stored_counts(&data, &policy, CLIENTS + 1);
    let want = (10 + 2 * PER_CLIENT) as u64;
    assert_eq!(&counts[..CLIENTS], &[want; CLIENTS][..]);
    assert_eq!(counts[CLIENTS], 0, "the slow body's tick must not count");
}

/// Issue 7: SIGTERM with 16 clients logging ticks and slow clients connected exits within
/// 10 s, and every tick acknowledged with 201 is counted after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_within_ten_seconds_and_keeps_every_acknowledged_tick() {
    const CLIENTS: usize = 16;
    const TERM_AFTER: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy_path = roomy_policy_file(dir.path());
    let policy = Policy::builtin();
    let mut server = Binary::serve(&data, Some(&policy_path), Some(REMOTE_ADMIN));
    let base = server.base.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let c = client();
    let mut tokens = Vec::new();
    for _ in 0..CLIENTS {
        tokens.push(
            remote_token(
                &c,
                &base,
                REMOTE_ADMIN,
                "supporter",
                Some("helse-vestfjord"),
            )
            .await,
        );
    }
    let slow_token = remote_token(
        &c,
        &base,
        REMOTE_ADMIN,
        "supporter",
        Some("helse-vestfjord"),
    )
    .await;
    // Slow clients that would hold shutdown for ever without its bound.
    let mut slow = Vec::new();
    for kind in [Slow::Drip, Slow::Silent, Slow::Body, Slow::Idle].repeat(5) {
        slow.push(tokio::spawn(slow_client(
            addr.clone(),
            kind,
            slow_token.clone(),
            Duration::from_secs(20),
        )));
    }

    let acked = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let per_client: Vec<Arc<AtomicU64>> =
        (0..CLIENTS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::new();
    for (n, token) in tokens.into_iter().enumerate() {
        let body = client_tick(&policy, n);
        let (c, url, acked, enough, mine) = (
            c.clone(),
            format!("{base}/api/v1/ticks"),
            acked.clone(),
            enough.clone(),
            per_client[n].clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match c.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        mine.fetch_add(1, Ordering::SeqCst);
                        if acked.fetch_add(1, Ordering::SeqCst) + 1 == TERM_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is shutting down
                }
            }
        }));
    }
    enough.notified().await;
    let sent = Instant::now();
    let ok = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    println!(
        "SIGTERM under load: exited after {:.2} s",
        took.as_secs_f64()
    );
    assert!(status.success(), "a clean exit: {status}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM; the bound is 10 s (grace {SHUTDOWN_GRACE:?})"
    );
    for t in tasks {
        t.await.unwrap();
    }
    for t in slow {
        t.await.unwrap();
    }
    let acked: Vec<u64> = per_client
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    drop(server);

    // Restart on the same directory, then count what is stored.
    let again = Binary::serve(&data, Some(&policy_path), Some(REMOTE_ADMIN));
    let r = c
        .get(format!("{}/healthz", again.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(again.terminate().success());
    let stored = stored_counts(&data, &policy, CLIENTS);
    for (n, (want, got)) in acked.iter().zip(&stored).enumerate() {
        // Every acknowledged tick is there; at most one more per client was cut at shutdown
        // after its write and before its answer.
        assert!(
            got >= want && *got <= want + 1,
            "client {n} had {want} acknowledged, the store has {got}"
        );
    }
    assert!(acked.iter().sum::<u64>() >= TERM_AFTER);
}
