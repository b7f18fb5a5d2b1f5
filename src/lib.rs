//! Interlude: an ad decision server for music-streaming free tiers.
//!
//! Crate map (see ARCHITECTURE.md): `domain` plain types; `decision` the pure engine; `store`
//! in-memory, durable (SQLite) and shared (Redis Cluster, `store::shared`) state; `state` the
//! handles every service shares; `cluster` a replica's side of cluster mode; `token` impression tokens; `service` the decisions every edge
//! calls; `grpc` the gRPC edge, the only module that knows wire types; `http` the HTTP listener,
//! serving `vast` (the VAST edge) and `console` (the ad-ops pages); `validation` checks both edges share; `app` wiring and serving; `net` accepted
//! connections; `config`, `signal`, `telemetry` operations; `demo` the demo catalog; `allocator`
//! the allocator's setting.
//!
//! Unsafe code is denied everywhere but in `allocator`, two calls into mimalloc's option table.
#![deny(unsafe_code)]

pub mod admission;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod console;
pub mod decision;
pub mod demo;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod net;
pub mod service;
pub mod signal;
pub mod state;
pub mod store;
pub mod synth;
pub mod telemetry;
pub mod token;
pub mod validation;
pub mod vast;
