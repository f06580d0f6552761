//! cedargate: the authorization decision service gateways and MCP servers delegate to.
//!
//! A caller hands over the raw credential it received and what is asked for (an MCP tool call
//! or an HTTP method + path); cedargate resolves the credential into one normalized
//! [`model::AuthInfo`], asks the Cedar policies, and answers allow/deny with the identity, the
//! deciding policies, a reason and the challenge the client needs.
//!
//! Module map (dependencies point down; see `ARCHITECTURE.md`):
//!
//! - [`authoring`]: `cedargate policy test`: YAML suites run through the real service, with
//!   coverage and mutation testing; `cedargate policy replay`: a decision log decided again
//!   against candidate policies.
//! - [`app`]: composition root: builds the parts from the config, binds, serves, shuts down.
//! - [`api`]: the only place that knows tonic and HTTP servers: gRPC services (Authorizer,
//!   Sessions, Admin), HTTP listener, and
//!   the one mapping of decisions and errors onto each wire.
//! - [`gateway`]: requests forwarded by gateways (Envoy ext_authz, nginx, Traefik): credential
//!   sources, MCP bodies, request facts, identity headers and denial bodies, wire-neutral.
//! - [`engine`]: the pipeline: `Authorization` → credential → AuthInfo → policies → decision.
//! - [`credential`]: header parsing, the [`credential::CredentialResolver`] trait, the chain,
//!   the digest tables for static tokens and API keys, the JWT and introspection backends,
//!   issuer discovery, and the single-flight token cache.
//! - [`session`]: login sessions (argon2id, token rotation, logout, rate limits).
//! - [`policy`]: the only place that knows Cedar: loading, validation, evaluation, reload,
//!   static entities, and the authoring tools (validation findings, formatting, explain).
//! - [`route`]: method/path normalization, route templates, route-generated tools.
//! - [`config`]: the typed config and the embedded demo.
//! - [`model`]: plain types shared by all of the above.
//! - [`telemetry`]: log set-up.

pub mod api;
pub mod app;
pub mod authoring;
pub mod config;
pub mod credential;
pub mod engine;
pub mod gateway;
pub mod model;
pub mod policy;
pub mod route;
pub mod session;
pub mod state;
pub mod telemetry;

pub use app::{App, AppError};
