use super::*;
use crate::credential::CredentialChain;
use crate::model::ClientAddress;
use crate::model::{Scheme, SecretDigest};
use std::net::IpAddr;
use std::sync::OnceLock;

/// One hash for the whole module: argon2 is slow on purpose.
fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("password123").unwrap())
}

fn manager_with(limits: (u32, u32), store: Arc<MemorySessionStore>) -> SessionManager {
    let identity = AuthInfo::new(CredentialKind::Session, "alice", vec!["user".into()]);
    let accounts =
        HashMap::from([("alice".to_owned(), Account { password_hash: alice_hash().to_owned(), identity })]);
    let window = Duration::from_secs(60);
    let limiter = MemoryRateLimiter::new(
        LimitRule { max_failures: limits.0, window },
        LimitRule { max_failures: limits.1, window },
    );
    SessionManager::new(
        accounts,
        store,
        Arc::new(limiter),
        SessionSettings {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(7200),
            // Long enough that a loaded machine still refreshes "at once" within it.
            refresh_reuse_grace: Duration::from_secs(1),
            max_per_user: 3,
            max_rotations: 32,
        },
    )
    .unwrap()
}

fn manager() -> SessionManager {
    manager_with((5, 20), Arc::new(MemorySessionStore::default()))
}

async fn subject_of(manager: &SessionManager, token: &Secret) -> Result<String, CredentialError> {
    let credential = Credential::new(Scheme::Bearer, token.expose());
    match manager.resolve(&credential).await? {
        Resolution::Resolved(auth) => Ok(auth.subject.clone()),
        Resolution::NotMine => Err(CredentialError::Unknown("Bearer")),
    }
}

fn password(text: &str) -> Secret {
    Secret::new(text)
}

#[tokio::test]
async fn login_opens_a_session_the_token_resolves_to() {
    let manager = manager();
    let tokens = manager.login("alice", &password("password123"), None).await.unwrap();
    assert!(tokens.access_token.expose().starts_with(ACCESS_PREFIX));
    assert!(tokens.refresh_token.expose().starts_with(REFRESH_PREFIX));
    // 256 random bits, base64url: 43 characters after the prefix.
    assert_eq!(tokens.access_token.expose().len(), ACCESS_PREFIX.len() + 43);
    assert!(tokens.refresh_expires_at > tokens.expires_at);
    assert_eq!(subject_of(&manager, &tokens.access_token).await.unwrap(), "alice");

    let credential = Credential::new(Scheme::Bearer, tokens.access_token.expose());
    let Resolution::Resolved(auth) = manager.resolve(&credential).await.unwrap() else { panic!() };
    assert_eq!(auth.kind, CredentialKind::Session);
    assert_eq!(auth.roles, ["user"]);
    assert_eq!(auth.expires_at, Some(tokens.expires_at));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let manager = manager();
    assert_eq!(
        manager.login("alice", &password("wrong"), None).await.unwrap_err(),
        SessionError::InvalidLogin
    );
    assert_eq!(
        manager.login("mallory", &password("password123"), None).await.unwrap_err(),
        SessionError::InvalidLogin
    );
}

#[tokio::test]
async fn empty_and_oversized_fields_are_refused_before_hashing() {
    let manager = manager();
    let long_password = "p".repeat(MAX_PASSWORD_BYTES + 1);
    let long_username = "u".repeat(MAX_USERNAME_BYTES + 1);
    let table = [
        ("", "password123", "username"),
        (long_username.as_str(), "password123", "username"),
        ("alice", "", "password"),
        ("alice", long_password.as_str(), "password"),
    ];
    for (username, secret, field) in table {
        match manager.login(username, &password(secret), None).await {
            Err(SessionError::BadField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn repeated_failures_lock_the_username_then_the_address() {
    let manager = manager_with((2, 3), Arc::new(MemorySessionStore::default()));
    let address = ClientAddress::Known("192.0.2.7".parse().unwrap());
    for _ in 0..2 {
        assert_eq!(
            manager.login("alice", &password("nope"), Some(address)).await.unwrap_err(),
            SessionError::InvalidLogin
        );
    }
    // Locked even with the right password: the attacker learns nothing more.
    let locked = manager.login("alice", &password("password123"), None).await.unwrap_err();
    assert!(matches!(locked, SessionError::RateLimited { .. }), "{locked:?}");

    // One more failure from the address (another username) exhausts the address budget.
    manager.login("bob", &password("nope"), Some(address)).await.unwrap_err();
    let by_address = manager.login("carol", &password("nope"), Some(address)).await.unwrap_err();
    assert!(matches!(by_address, SessionError::RateLimited { .. }), "{by_address:?}");
}

#[tokio::test]
async fn clients_behind_an_untrusted_proxy_are_counted_apart() {
    let manager = manager_with((100, 3), Arc::new(MemorySessionStore::default()));
    let proxy: IpAddr = "192.0.2.1".parse().unwrap();
    let behind =
        |claimed: &str| Some(ClientAddress::Untrusted { peer: proxy, claimed: claimed.parse().unwrap() });
    for username in ["bob", "carol", "dave"] {
        manager.login(username, &password("nope"), behind("198.51.100.6")).await.unwrap_err();
    }
    let attacker = manager.login("erin", &password("nope"), behind("198.51.100.6")).await.unwrap_err();
    assert!(matches!(attacker, SessionError::RateLimited { .. }), "{attacker:?}");
    // Another client of the same proxy still logs in.
    manager.login("alice", &password("password123"), behind("198.51.100.7")).await.unwrap();
}

#[tokio::test]
async fn a_successful_login_clears_the_username_failures() {
    let manager = manager_with((2, 100), Arc::new(MemorySessionStore::default()));
    manager.login("alice", &password("nope"), None).await.unwrap_err();
    manager.login("alice", &password("password123"), None).await.unwrap();
    manager.login("alice", &password("nope"), None).await.unwrap_err();
    assert!(manager.login("alice", &password("password123"), None).await.is_ok());
}

#[tokio::test]
async fn refresh_rotates_and_retires_the_old_tokens() {
    let manager = manager();
    let first = manager.login("alice", &password("password123"), None).await.unwrap();
    let second = manager.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(first.access_token, second.access_token);
    assert_eq!(subject_of(&manager, &second.access_token).await.unwrap(), "alice");
    assert!(subject_of(&manager, &first.access_token).await.is_err(), "old access token must stop working");

    // Presented again at once (a retry whose first reply was lost, a second tab), it gets the
    // same tokens again, and they still work...
    let again = manager.refresh(&first.refresh_token).await.unwrap();
    assert_eq!((&again.access_token, &again.refresh_token), (&second.access_token, &second.refresh_token));
    assert_eq!((again.expires_at, again.refresh_expires_at), (second.expires_at, second.refresh_expires_at));
    assert_eq!(subject_of(&manager, &second.access_token).await.unwrap(), "alice");
    // ...until the session has moved on: then it is only refused, and the newer tokens live.
    let third = manager.refresh(&second.refresh_token).await.unwrap();
    assert_eq!(manager.refresh(&first.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
    assert_eq!(subject_of(&manager, &third.access_token).await.unwrap(), "alice");
    // Reused after the grace period it revokes the whole session, new tokens too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(manager.refresh(&first.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
    assert!(subject_of(&manager, &third.access_token).await.is_err());
    assert_eq!(manager.refresh(&third.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
}

#[tokio::test]
async fn a_logout_with_a_rotated_out_token_ends_the_session_whoever_rotated_it() {
    // A thief who stole the refresh token rotates first; the victim logs out with the tokens
    // they still hold: the thief's session must end.
    for victims_token in [0, 1] {
        let manager = manager();
        let victim = manager.login("alice", &password("password123"), None).await.unwrap();
        let thief = manager.refresh(&victim.refresh_token).await.unwrap();
        let thief = manager.refresh(&thief.refresh_token).await.unwrap();
        let held = [&victim.access_token, &victim.refresh_token][victims_token];
        assert!(manager.logout(held).await.unwrap(), "the logout found the session");
        assert!(subject_of(&manager, &thief.access_token).await.is_err());
        assert_eq!(manager.refresh(&thief.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
        assert!(!manager.logout(held).await.unwrap(), "a second logout revokes nothing");
    }
}

#[tokio::test]
async fn a_login_beyond_the_users_limit_ends_their_oldest_session() {
    // The test manager allows 3 sessions per user.
    let manager = manager();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(manager.login("alice", &password("password123"), None).await.unwrap());
    }
    for (index, session) in sessions.iter().enumerate() {
        let live = subject_of(&manager, &session.access_token).await.is_ok();
        assert_eq!(live, index >= 2, "session {index}: only the newest 3 live");
    }
    // A session ended by hand frees its place: the next login ends no other.
    assert!(manager.logout(&sessions[4].access_token).await.unwrap());
    let sixth = manager.login("alice", &password("password123"), None).await.unwrap();
    for session in [&sessions[2], &sessions[3], &sixth] {
        assert!(subject_of(&manager, &session.access_token).await.is_ok());
    }
    // Rotation keeps a session's place; the oldest login is still the first to go.
    let rotated = manager.refresh(&sessions[2].refresh_token).await.unwrap();
    manager.login("alice", &password("password123"), None).await.unwrap();
    assert!(subject_of(&manager, &rotated.access_token).await.is_err());
    assert!(subject_of(&manager, &sessions[3].access_token).await.is_ok());
}

#[tokio::test]
async fn a_sealed_replay_opens_only_with_the_refresh_token_it_was_sealed_under() {
    // The store keeps the replayed tokens sealed under the retired refresh token: what it holds
    // is no token, and a box swapped in from another rotation does not open.
    let store = Arc::new(MemorySessionStore::default());
    let manager = manager_with((5, 20), Arc::clone(&store));
    let first = manager.login("alice", &password("password123"), None).await.unwrap();
    let other = manager.login("alice", &password("password123"), None).await.unwrap();
    manager.refresh(&first.refresh_token).await.unwrap();
    manager.refresh(&other.refresh_token).await.unwrap();
    let boxes: Vec<String> = store.spent_replays();
    assert_eq!(boxes.len(), 2);
    for sealed in &boxes {
        assert!(!sealed.contains("session-") && !sealed.contains("refresh-"));
    }
    let opened = boxes.iter().filter(|sealed| sealed::open(&first.refresh_token, sealed).is_ok()).count();
    assert_eq!(opened, 1, "exactly its own box opens under a refresh token");
}

#[tokio::test]
async fn unknown_refresh_tokens_are_refused() {
    let manager = manager();
    assert_eq!(
        manager.refresh(&Secret::new("refresh-unknown")).await.unwrap_err(),
        SessionError::InvalidRefresh
    );
}

#[tokio::test]
async fn logout_revokes_at_once_by_either_token() {
    let manager = manager();
    let by_access = manager.login("alice", &password("password123"), None).await.unwrap();
    assert!(manager.logout(&by_access.access_token).await.unwrap());
    let refused = subject_of(&manager, &by_access.access_token).await.unwrap_err();
    assert_eq!(refused, CredentialError::Invalid("session is unknown, expired or revoked".into()));
    assert_eq!(manager.refresh(&by_access.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
    assert!(!manager.logout(&by_access.access_token).await.unwrap(), "second logout revokes nothing");

    let by_refresh = manager.login("alice", &password("password123"), None).await.unwrap();
    assert!(manager.logout(&by_refresh.refresh_token).await.unwrap());
    assert!(subject_of(&manager, &by_refresh.access_token).await.is_err());
}

#[tokio::test]
async fn an_expired_session_is_refused_and_purged() {
    let store = Arc::new(MemorySessionStore::default());
    let manager = Arc::new(manager_with((5, 20), Arc::clone(&store)));
    let mut auth = AuthInfo::new(CredentialKind::Session, "alice", vec![]);
    auth.expires_at = Some(unix_now() - 1);
    store
        .create(
            SessionRecord {
                family: 1,
                username: "alice".into(),
                auth: Arc::new(auth),
                access: SecretDigest::of(b"session-old"),
                refresh: SecretDigest::of(b"refresh-old"),
                refresh_expires_at: unix_now() - 1,
            },
            10,
        )
        .await
        .unwrap();
    let mut chain = CredentialChain::default();
    chain.push(Scheme::Bearer, manager.clone() as Arc<dyn CredentialResolver>);
    let credential = Credential::new(Scheme::Bearer, "session-old");
    assert_eq!(chain.resolve(&credential, unix_now()).await.unwrap_err(), CredentialError::Expired);
    assert_eq!(manager.refresh(&Secret::new("refresh-old")).await.unwrap_err(), SessionError::InvalidRefresh);

    store.purge_expired(unix_now()).await.unwrap();
    assert!(store.is_empty());
    assert!(store.lookup_access(&credential.digest).await.unwrap().is_none());
}

#[tokio::test]
async fn tokens_that_are_not_sessions_are_not_mine() {
    let manager = manager();
    let credential = Credential::new(Scheme::Bearer, "user-token-123");
    assert!(matches!(manager.resolve(&credential).await.unwrap(), Resolution::NotMine));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_each_get_their_own_session_within_the_users_limit() {
    let manager = Arc::new(manager());
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.login("alice", &Secret::new("password123"), None).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for login in logins {
        tokens.push(login.await.unwrap().unwrap());
    }
    let distinct: std::collections::HashSet<_> =
        tokens.iter().map(|t| t.access_token.expose().to_owned()).collect();
    assert_eq!(distinct.len(), 8);
    // Counted in turn: the user's limit (3) holds however the logins interleave.
    let mut live = 0;
    for token in &tokens {
        live += usize::from(subject_of(&manager, &token.access_token).await.is_ok());
    }
    assert_eq!(live, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_refreshes_with_one_token_at_most_one_wins() {
    let manager = Arc::new(manager());
    let tokens = manager.login("alice", &password("password123"), None).await.unwrap();
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let manager = Arc::clone(&manager);
            let refresh = tokens.refresh_token.clone();
            tokio::spawn(async move { manager.refresh(&refresh).await })
        })
        .collect();
    let mut issued = std::collections::HashSet::new();
    for attempt in attempts {
        if let Ok(tokens) = attempt.await.unwrap() {
            issued.insert(tokens.access_token.expose().to_owned());
        }
    }
    assert!(issued.len() <= 1, "{} rotations with one token", issued.len());
}

#[test]
fn password_hashes_must_be_argon2id() {
    assert!(check_password_hash(alice_hash()).is_ok());
    assert!(check_password_hash("password123").is_err());
    let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$L5kF1O6bWJ7hYfUOXW1o3A";
    assert!(check_password_hash(argon2i).unwrap_err().contains("argon2id"));
}

#[tokio::test]
async fn a_burst_of_wrong_passwords_gets_no_more_checks_than_the_budget() {
    let manager = Arc::new(manager_with((5, 1000), Arc::new(MemorySessionStore::default())));
    let attempts: Vec<_> = (0..100)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.login("alice", &password("wrong"), None).await.unwrap_err() })
        })
        .collect();
    let mut checked = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            SessionError::InvalidLogin => checked += 1,
            SessionError::RateLimited { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(checked, 5, "each check past the budget is a free guess");
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_leave_the_winner_signed_in() {
    let manager = Arc::new(manager());
    let tokens = manager.login("alice", &password("password123"), None).await.unwrap();
    let refreshes: Vec<_> = (0..50)
        .map(|_| {
            let (manager, refresh) = (Arc::clone(&manager), tokens.refresh_token.clone());
            tokio::spawn(async move { manager.refresh(&refresh).await })
        })
        .collect();
    let mut winners = Vec::new();
    for refresh in refreshes {
        match refresh.await.unwrap() {
            Ok(tokens) => winners.push(tokens),
            Err(error) => assert_eq!(error, SessionError::InvalidRefresh),
        }
    }
    // One rotation: every caller that got tokens got the winner's.
    let winner = winners.pop().expect("a rotation won");
    assert!(winners.iter().all(|tokens| tokens.access_token == winner.access_token), "exactly one rotation");
    let credential =
        crate::model::Credential::new(crate::model::Scheme::Bearer, winner.access_token.expose());
    assert!(
        matches!(manager.resolve(&credential).await, Ok(Resolution::Resolved(_))),
        "the winner's token works"
    );

    // After the grace period a reuse is theft: the whole session goes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(manager.refresh(&tokens.refresh_token).await.unwrap_err(), SessionError::InvalidRefresh);
    assert!(manager.resolve(&credential).await.is_err(), "reuse after the grace revokes the family");
    assert!(manager.refresh(&winner.refresh_token).await.is_err());
}

#[tokio::test]
async fn a_logout_with_an_expired_access_token_still_ends_the_session_after_a_purge() {
    let store = Arc::new(MemorySessionStore::default());
    let manager = manager_with((5, 20), Arc::clone(&store));
    let mut auth = AuthInfo::new(CredentialKind::Session, "alice", vec![]);
    // The access token expired; the refresh token lives on.
    auth.expires_at = Some(unix_now() - 1);
    let record = SessionRecord {
        family: 7,
        username: "alice".into(),
        auth: Arc::new(auth),
        access: SecretDigest::of(b"session-expired"),
        refresh: SecretDigest::of(b"refresh-live"),
        refresh_expires_at: unix_now() + 3600,
    };
    store.create(record, 10).await.unwrap();
    store.purge_expired(unix_now()).await.unwrap();
    assert!(manager.logout(&Secret::new("session-expired")).await.unwrap(), "the session was found");
    assert_eq!(
        manager.refresh(&Secret::new("refresh-live")).await.unwrap_err(),
        SessionError::InvalidRefresh
    );
}

#[tokio::test]
async fn a_login_refreshed_in_a_loop_is_stopped_before_it_forgets_a_rotation() {
    // The test manager remembers 32 rotations of a login at most.
    for ending in ["reuse", "logout"] {
        let store = Arc::new(MemorySessionStore::default());
        let manager = manager_with((5, 20), Arc::clone(&store));
        let first = manager.login("alice", &password("password123"), None).await.unwrap();
        let mut tokens = vec![first];
        let refused = loop {
            match manager.refresh(&tokens.last().unwrap().refresh_token).await {
                Ok(next) => tokens.push(next),
                Err(error) => break error,
            }
            assert!(tokens.len() <= 32 + 1, "a loop of refreshes was never stopped");
        };
        assert_eq!(tokens.len(), 32 + 1);
        let SessionError::TooManyRotations { retry_after } = refused else { panic!("{refused:?}") };
        assert!(
            retry_after > Duration::from_secs(3600),
            "until the oldest rotation expires: {retry_after:?}"
        );
        assert_eq!(store.rotations_remembered(), 32);
        // So the first tokens are still known: a thief who looped cannot outrun the owner.
        let current = tokens.last().unwrap();
        assert_eq!(subject_of(&manager, &current.access_token).await.unwrap(), "alice");
        if ending == "logout" {
            assert!(manager.logout(&tokens[0].access_token).await.unwrap());
        } else {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(
                manager.refresh(&tokens[0].refresh_token).await.unwrap_err(),
                SessionError::InvalidRefresh
            );
        }
        assert!(subject_of(&manager, &current.access_token).await.is_err(), "{ending} ended it");
    }
}

#[test]
fn retry_after_is_rounded_up_to_whole_seconds() {
    let limited = |millis| SessionError::RateLimited { retry_after: Duration::from_millis(millis) };
    assert_eq!(limited(1200).retry_after_seconds(), Some(2));
    assert_eq!(limited(2000).retry_after_seconds(), Some(2));
    assert_eq!(limited(1200).to_string(), "too many failed logins; retry in 2 s");
    assert_eq!(SessionError::InvalidLogin.retry_after_seconds(), None);
}

#[test]
fn rotations_racing_logouts_and_purges_never_deadlock() {
    // Each path locks the store's maps in one order; a rotation holding its refresh entry while
    // a logout held the family and waited for that entry once wedged both tokio workers.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        runtime.block_on(async {
            let store = Arc::new(MemorySessionStore::default());
            let digest = |kind: &str, round: u32| SecretDigest::of(format!("{kind}-{round}").as_bytes());
            for round in 0..2000u32 {
                let record = SessionRecord {
                    family: u128::from(round),
                    username: format!("user{}", round % 7),
                    auth: Arc::new(AuthInfo::new(CredentialKind::Session, "alice", vec![])),
                    access: digest("access", round),
                    refresh: digest("refresh", round),
                    refresh_expires_at: unix_now() + 3600,
                };
                store.create(record, 3).await.unwrap();
                let next = NextTokens {
                    access: digest("next-access", round),
                    refresh: digest("next-refresh", round),
                    expires_at: unix_now() + 60,
                    refresh_expires_at: unix_now() + 3600,
                    replay: "sealed".into(),
                    remembered: 32,
                };
                let (rotating, revoking, purging) =
                    (Arc::clone(&store), Arc::clone(&store), Arc::clone(&store));
                let rotate = tokio::spawn(async move {
                    rotating
                        .rotate(&digest("refresh", round), &next, unix_now(), Duration::from_secs(2))
                        .await
                });
                let revoke = tokio::spawn(async move { revoking.revoke(&digest("access", round)).await });
                let purge = tokio::spawn(async move { purging.purge_expired(unix_now()).await });
                let (rotated, revoked, purged) =
                    (rotate.await.unwrap(), revoke.await.unwrap(), purge.await.unwrap());
                assert!(rotated.is_ok() && revoked.is_ok() && purged.is_ok());
                // Whichever came first, the login ends revoked: its next tokens do not live on.
                assert!(
                    store.lookup_access(&digest("next-access", round)).await.unwrap().is_none(),
                    "round {round}"
                );
            }
        });
        let _ = done.send(());
    });
    assert!(finished.recv_timeout(Duration::from_secs(120)).is_ok(), "rotations and logouts deadlocked");
}
