//! `sessions:`: login sessions, their users and the brute-force limits.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Login sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Access token lifetime, e.g. `1h`. Default 1 hour.
    #[serde(default = "default_access_ttl")]
    pub access_ttl: HumanDuration,
    /// Refresh token lifetime. Default 24 hours.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl: HumanDuration,
    /// A refresh token presented again within this long after its rotation is refused without
    /// revoking the session (a client's concurrent or retried refresh, as Auth0's reuse
    /// interval and Okta's grace period allow); later, reuse revokes it. Default 2s.
    #[serde(default = "default_refresh_reuse_grace")]
    pub refresh_reuse_grace: HumanDuration,
    /// Most live sessions one user may hold; a login beyond it ends that user's oldest
    /// session, so logins in a loop cannot fill the session store. Default 100.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: usize,
    /// Most rotations of one login remembered at once (its spent refresh and retired access
    /// tokens, each until it would have expired, for reuse detection and logout); a refresh
    /// beyond is refused (429) until the oldest expires, never made by forgetting one. Default
    /// 1000: a client refreshing every 90 s around the clock stays below it.
    #[serde(default = "default_max_rotations")]
    pub max_rotations: usize,
    /// Users who may log in.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Brute-force limits.
    #[serde(default)]
    pub login_rate_limit: LoginRateLimitConfig,
}

/// A user who may log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// argon2id PHC string (`cedargate hash-password`), or `${ENV_VAR}`.
    pub password_hash: PasswordHashString,
    /// Subject of the session's identity; default: the username.
    pub subject: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: String,
}

/// Failed-login limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRateLimitConfig {
    /// Per username. Default 5 failures per 15 minutes.
    #[serde(default = "default_per_username")]
    pub per_username: LimitConfig,
    /// Per client address. Default 20 failures per 15 minutes.
    #[serde(default = "default_per_address")]
    pub per_address: LimitConfig,
}

/// A failure budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Failures allowed per window.
    pub max_failures: u32,
    /// Window length, e.g. `15m`.
    pub window: HumanDuration,
}

fn default_access_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_refresh_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_refresh_reuse_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_max_per_user() -> usize {
    100
}
fn default_max_rotations() -> usize {
    1000
}
fn default_per_username() -> LimitConfig {
    LimitConfig { max_failures: 5, window: HumanDuration(Duration::from_secs(15 * 60)) }
}
fn default_per_address() -> LimitConfig {
    LimitConfig { max_failures: 20, window: HumanDuration(Duration::from_secs(15 * 60)) }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            access_ttl: default_access_ttl(),
            refresh_ttl: default_refresh_ttl(),
            refresh_reuse_grace: default_refresh_reuse_grace(),
            max_per_user: default_max_per_user(),
            max_rotations: default_max_rotations(),
            users: Vec::new(),
            login_rate_limit: LoginRateLimitConfig::default(),
        }
    }
}
impl Default for LoginRateLimitConfig {
    fn default() -> Self {
        Self { per_username: default_per_username(), per_address: default_per_address() }
    }
}
