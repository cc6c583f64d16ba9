//! gatehouse: a user-authentication REST API (register, login, logout, "who am
//! I", user management) over JSON Web Tokens, with its database inside.
//!
//! It speaks the wire contract of the Node.js tutorial "Securing RESTful APIs
//! with JSON Web Tokens" (see `API.md` in the shared folder) and closes that
//! tutorial's security holes.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`serve`, `admin create`, `export`, `import`) and
//!   the one place where errors become exit codes.
//! - [`config`]: defaults → `config.toml` → `GATEHOUSE_*` env → flags, validated
//!   into [`config::Settings`] before anything binds or opens.
//! - [`app`]: [`app::App`], the only shared state: settings, store (with its
//!   login, registration and mail-request throttles), signing keys, password
//!   hasher, mailer, CORS policy, metrics, request log. Passed explicitly, never global.
//! - [`log`]: the log line's format and its background writer.
//! - [`mail`]: mail over SMTP: templates, links, the background sender.
//! - [`metrics`]: the Prometheus series (requests by route pattern, logins,
//!   refreshes, ended sessions, mail, hashing, store timings, `process_*`),
//!   recorded in atomics built at start-up; off unless `metrics.listen`.
//! - [`server`]: the IO edge: accept loop, connection cap, timeouts, request log,
//!   graceful shutdown; the `/metrics` listener.
//! - [`http`]: the router (over a route table it is given), `RequestContext`,
//!   `ApiError` and its JSON bodies, the token check
//!   ([`http::auth::AuthUser`]), request-body decoding, CORS.
//! - [`api`]: the route table ([`api::routes::ROUTES`], one line per route)
//!   and the handlers, one file per resource (auth, users, sessions, keys,
//!   recovery, pages, audit, export, health, openapi).
//! - [`domain`]: users and their input rules, password hashing, tokens and
//!   signing keys, sessions, mail tokens, throttling, audit events. Knows
//!   nothing of hyper or sled.
//! - [`keyring`]: the asymmetric signing keys' life over the store (first
//!   key, rotation, retirement, following other instances).
//! - [`store`]: the only module that opens or queries a database (sled or
//!   PostgreSQL): trees and tables, transactions (each change with its audit
//!   events), durability, shared counters.
//! - [`transfer`]: the export file (JSON Lines), produced from a store page by
//!   page, read and checked whole before an import; the tutorial's MongoDB
//!   users (`mongoexport`).

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod keyring;
pub mod log;
pub mod mail;
pub mod metrics;
pub mod server;
pub mod store;
pub mod transfer;

pub use app::App;
pub use config::Settings;
