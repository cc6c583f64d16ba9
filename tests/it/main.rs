//! The integration tests: one binary, one module per area. Every test talks to
//! a real gatehouse over HTTP (see `support`).

mod support;

mod auth;
mod binary;
mod bodies;
mod network;
mod openapi;
mod properties;
mod tokens;
mod users;
