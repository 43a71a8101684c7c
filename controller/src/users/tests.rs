//! The users service on a temporary store with a clock moved by hand.

use std::net::IpAddr;

use super::tokens::tests::hand_made;
use super::*;

const PW: &str = "correct-horse-battery";

struct T {
    users: Users,
    clock: Arc<ManualClock>,
    store: Store,
    _dir: tempfile::TempDir,
}

fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let clock = ManualClock::at(1_800_000_000);
    let users = Users::open(&store, UserSettings::default(), clock.clone()).unwrap();
    T {
        users,
        clock,
        store,
        _dir: dir,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn login(t: &T, name: &str, pw: &str) -> Result<Grant, LoginError> {
    t.users.password_grant(name, pw, ip("10.1.1.1"))
}

fn user_named(p: Principal) -> String {
    match p {
        Principal::User { name, .. } => name,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_login_gives_a_token_that_names_the_user_until_it_expires() {
    let t = setup();
    let alice = t.users.create("alice", PW).unwrap();
    let g = login(&t, "alice", PW).unwrap();
    assert_eq!(g.expires_in, 600);
    assert_eq!(g.claims.user_id, alice.guid);
    assert_eq!(g.claims.sub, alice.guid);
    assert_eq!(g.claims.client_id, "cf");
    assert_eq!(g.claims.grant_type, "password");
    assert_eq!(g.claims.exp - g.claims.iat, 600);
    assert!(g
        .claims
        .scope
        .contains(&"cloud_controller.read".to_string()));
    assert_eq!(g.refresh_token.split_once('.').unwrap().1.len(), 64);
    let p = t.users.verify_access(&g.access_token).unwrap();
    assert_eq!(p.actor(), "alice");
    assert_eq!(
        p,
        Principal::User {
            guid: alice.guid.clone(),
            name: "alice".into()
        }
    );
    t.clock.advance(599);
    assert!(t.users.verify_access(&g.access_token).is_ok());
    t.clock.advance(1);
    assert_eq!(
        t.users.verify_access(&g.access_token),
        Err(TokenError::Expired)
    );
    // Nothing secret is stored: the refresh token's hash only, the password's argon2id hash.
    let session = t
        .store
        .users()
        .unwrap()
        .session(&g.claims.sid)
        .unwrap()
        .unwrap();
    assert_eq!(session.refresh_sha256, sha256_hex(&g.refresh_token));
    let rec = t.store.users().unwrap().get("alice").unwrap().unwrap();
    assert!(rec.password_hash.starts_with("$argon2id$"));
    assert!(!rec.password_hash.contains(PW));
}

#[test]
fn a_refresh_rotates_and_the_old_refresh_token_is_refused() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let first = login(&t, "alice", PW).unwrap();
    t.clock.advance(700);
    assert_eq!(
        t.users.verify_access(&first.access_token),
        Err(TokenError::Expired)
    );
    let second = t.users.refresh_grant(&first.refresh_token).unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.claims.sid, first.claims.sid, "the same session");
    assert_eq!(second.claims.grant_type, "refresh_token");
    assert_eq!(
        user_named(t.users.verify_access(&second.access_token).unwrap()),
        "alice"
    );
    match t.users.refresh_grant(&first.refresh_token) {
        Err(LoginError::InvalidGrant(why)) => assert!(why.contains("not valid"), "{why}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("an old refresh token worked"),
    }
    let third = t.users.refresh_grant(&second.refresh_token).unwrap();
    assert!(t.users.verify_access(&third.access_token).is_ok());
    // A refresh token past the session's 30 days is refused.
    t.clock.advance(30 * 24 * 3600);
    assert!(matches!(
        t.users.refresh_grant(&third.refresh_token),
        Err(LoginError::InvalidGrant(why)) if why.contains("expired")
    ));
}

#[test]
fn a_revoked_session_ends_its_refresh_and_access_tokens() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let g = login(&t, "alice", PW).unwrap();
    let other = login(&t, "alice", PW).unwrap();
    assert!(!t.users.revoke("nope.nope").unwrap());
    assert!(t.users.revoke(&g.refresh_token).unwrap());
    assert!(!t.users.revoke(&g.refresh_token).unwrap(), "already gone");
    assert!(matches!(
        t.users.refresh_grant(&g.refresh_token),
        Err(LoginError::InvalidGrant(_))
    ));
    match t.users.verify_access(&g.access_token) {
        Err(TokenError::Invalid(why)) => assert!(why.contains("session ended"), "{why}"),
        r => panic!("{r:?}"),
    }
    assert!(
        t.users.verify_access(&other.access_token).is_ok(),
        "another login stays"
    );
}

#[test]
fn a_token_signed_with_another_key_or_alg_none_is_refused() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let g = login(&t, "alice", PW).unwrap();
    // Another controller (its own key), same user, same session id.
    let dir = tempfile::tempdir().unwrap();
    let other_store = Store::open(dir.path()).unwrap();
    let other = Users::open(&other_store, UserSettings::default(), t.clock.clone()).unwrap();
    let foreign = other.keys.sign(&g.claims).unwrap();
    match t.users.verify_access(&foreign) {
        Err(TokenError::Invalid(why)) => assert!(why.contains("signature"), "{why}"),
        r => panic!("{r:?}"),
    }
    let none = hand_made(r#"{"alg":"none","typ":"JWT"}"#, &g.claims, "");
    assert!(matches!(
        t.users.verify_access(&none),
        Err(TokenError::Invalid(_))
    ));
    let none_signed = hand_made(
        r#"{"alg":"none"}"#,
        &g.claims,
        g.access_token.rsplit('.').next().unwrap(),
    );
    assert!(matches!(
        t.users.verify_access(&none_signed),
        Err(TokenError::Invalid(_))
    ));
    assert!(t.users.verify_access(&g.access_token).is_ok());
}

#[test]
fn a_deleted_users_tokens_are_refused_even_if_the_name_comes_back() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let g = login(&t, "alice", PW).unwrap();
    t.users.delete("alice").unwrap();
    assert!(matches!(
        t.users.verify_access(&g.access_token),
        Err(TokenError::Invalid(_))
    ));
    assert!(matches!(
        t.users.refresh_grant(&g.refresh_token),
        Err(LoginError::InvalidGrant(_))
    ));
    // A new alice is another user: the old token (its guid) is not hers.
    t.users.create("alice", PW).unwrap();
    assert!(t.users.verify_access(&g.access_token).is_err());
    assert!(matches!(
        t.users.delete("nobody").unwrap_err().to_api().code,
        ErrorCode::NotFound
    ));
}

#[test]
fn five_failures_lock_the_account_until_a_time_and_success_clears() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    for i in 0..4 {
        assert!(
            matches!(
                login(&t, "alice", "wrong-pass"),
                Err(LoginError::BadCredentials)
            ),
            "{i}"
        );
        t.clock.advance(60);
    }
    let start = t.clock.now();
    match login(&t, "alice", "wrong-pass") {
        Err(LoginError::Locked { until }) => assert_eq!(until, start + 300),
        r => panic!("{:?}", r.err()),
    }
    // Locked: even the right password is refused, until the lock ends.
    t.clock.advance(299);
    assert!(matches!(
        login(&t, "alice", PW),
        Err(LoginError::Locked { until }) if until == start + 300
    ));
    let listed = t.users.list().unwrap();
    assert_eq!(
        listed[0].locked_until.unwrap().unix_timestamp(),
        start + 300
    );
    t.clock.advance(1);
    login(&t, "alice", PW).unwrap();
    // Two failures, then a success: the count starts again.
    login(&t, "alice", "wrong-pass").err().unwrap();
    login(&t, "alice", "wrong-pass").err().unwrap();
    login(&t, "alice", PW).unwrap();
    let rec = t.store.users().unwrap().get("alice").unwrap().unwrap();
    assert!(rec.failed_logins.is_empty());
    assert_eq!(rec.locked_until, None);
}

#[test]
fn the_lock_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_800_000_000);
    let (token, until) = {
        let store = Store::open(dir.path()).unwrap();
        let users = Users::open(&store, UserSettings::default(), clock.clone()).unwrap();
        users.create("alice", PW).unwrap();
        let g = users
            .password_grant("alice", PW, ip("10.0.0.1"))
            .ok()
            .unwrap();
        let mut until = None;
        for _ in 0..5 {
            if let Err(LoginError::Locked { until: u }) =
                users.password_grant("alice", "wrong-pass", ip("10.0.0.1"))
            {
                until = Some(u);
            }
        }
        (g.access_token, until.unwrap())
    };
    let store = crate::store::tests::reopen(dir.path());
    let users = Users::open(&store, UserSettings::default(), clock.clone()).unwrap();
    assert!(matches!(
        users.password_grant("alice", PW, ip("10.0.0.9")),
        Err(LoginError::Locked { until: u }) if u == until
    ));
    // The signing key was kept too: the earlier token still verifies.
    assert_eq!(user_named(users.verify_access(&token).unwrap()), "alice");
}

#[test]
fn an_address_with_ten_failures_a_minute_waits() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let attacker = ip("192.0.2.7");
    for i in 0..10 {
        // Different (unknown) names: the per-user lock never starts.
        let r = t.users.password_grant(&format!("nobody{i}"), "x", attacker);
        assert!(matches!(r, Err(LoginError::BadCredentials)), "{i}");
    }
    match t.users.password_grant("alice", PW, attacker) {
        Err(LoginError::TooManyFromAddress { retry_after }) => assert_eq!(retry_after, 60),
        r => panic!("{:?}", r.err()),
    }
    // Another address logs in, and alice's account is not locked.
    t.users
        .password_grant("alice", PW, ip("192.0.2.8"))
        .unwrap();
    t.clock.advance(60);
    t.users.password_grant("alice", PW, attacker).unwrap();
}

#[test]
fn refusals_say_why_and_change_nothing() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let before = t.store.users().unwrap().list().unwrap();
    let cases: [(&str, &str, ErrorCode, &str); 5] = [
        ("Alice", PW, ErrorCode::InvalidName, "lowercase letters"),
        (
            "-x",
            PW,
            ErrorCode::InvalidName,
            "starting with a letter or digit",
        ),
        ("", PW, ErrorCode::InvalidName, "must not be empty"),
        (
            "bob",
            "abc1234",
            ErrorCode::InvalidRequest,
            "at least 8 characters",
        ),
        (
            "alice",
            "another-password",
            ErrorCode::Conflict,
            "user alice already exists",
        ),
    ];
    for (name, pw, code, msg) in cases {
        let e = t.users.create(name, pw).unwrap_err().to_api();
        assert_eq!(e.code, code, "{name}");
        assert!(e.message.contains(msg), "{name}: {}", e.message);
        assert!(
            !e.message.contains(pw),
            "{name}: the password is in the message"
        );
    }
    let e = t
        .users
        .set_password("alice", Some("wrong-old-pass"), "new-password-1", false)
        .unwrap_err()
        .to_api();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(
        e.message.contains("the old password is wrong"),
        "{}",
        e.message
    );
    let e = t
        .users
        .set_password("alice", None, "new-password-1", false)
        .unwrap_err()
        .to_api();
    assert!(e.message.contains("old_password"), "{}", e.message);
    let e = t
        .users
        .set_password("alice", Some(PW), "short", false)
        .unwrap_err()
        .to_api();
    assert!(e.message.contains("at least 8"), "{}", e.message);
    assert_eq!(t.store.users().unwrap().list().unwrap(), before);
    login(&t, "alice", PW).unwrap();
}

#[test]
fn a_password_change_takes_and_the_admin_reset_ends_sessions() {
    let t = setup();
    t.users.create("alice", PW).unwrap();
    let g = login(&t, "alice", PW).unwrap();
    t.users
        .set_password("alice", Some(PW), "second-password", false)
        .unwrap();
    assert!(matches!(
        login(&t, "alice", PW),
        Err(LoginError::BadCredentials)
    ));
    assert!(
        t.users.verify_access(&g.access_token).is_ok(),
        "own change keeps sessions"
    );
    login(&t, "alice", "second-password").unwrap();
    t.users
        .set_password("alice", None, "third-password", true)
        .unwrap();
    assert!(t.users.verify_access(&g.access_token).is_err());
    login(&t, "alice", "third-password").unwrap();
}
