//! # flotilla-raft: a sans-IO Raft core
//!
//! placeholder docs, rewritten below
pub mod durable;
pub mod types;

pub use durable::{DurableState, Persist};
pub use types::*;
