//! The real binary: first start writes the admin token to a file (never to the output), it
//! works, and SIGTERM shuts down cleanly with the data kept.

use crate::helpers::{Binary, client, remote_token};

#[tokio::test]
async fn first_start_writes_a_working_admin_token_to_a_file_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Binary::serve(&data, None, None);
    let file = dir.path().join("data.admin-token");
    assert!(
        server.banner.contains(&file.display().to_string()),
        "{}",
        server.banner
    );
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(token.starts_with("tst_"));
    assert!(
        !server.banner.contains(&token),
        "the token is never printed"
    );
    let c = client();
    let sup = remote_token(
        &c,
        &server.base,
        &token,
        "supporter",
        Some("vikafjord-kommune"),
    )
    .await;
    let r = c
        .get(format!("{}/api/v1/policy", server.base))
        .bearer_auth(&sup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        server.terminate().success(),
        "SIGTERM must shut down cleanly"
    );

    let again = Binary::serve(&data, None, None);
    assert!(
        !again.banner.contains("tst_"),
        "a second start must not print a token: {}",
        again.banner
    );
    let r = c
        .get(format!("{}/api/v1/tokens", again.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the admin token survives a restart");
    assert!(again.terminate().success());
}

#[test]
fn policy_check_explains_the_plan_and_fails_on_a_bad_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(["policy", "check"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("is valid")
            && text.contains("total")
            && text.contains("One contact is protected"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        tellestrek::policy::DEFAULT_POLICY.replace("grace_days = 7", "grace_days = 90"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml") && err.contains("period.grace_days"),
        "{err}"
    );
}
