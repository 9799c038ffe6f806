//! The ABI shared between agentmon's kernel programs (`monitor-ebpf`) and the
//! daemon (`monitor`).
//!
//! Rules for every type in this crate:
//! * `#[repr(C)]`, fixed-width integer fields only (no `bool`, `Option`,
//!   enums or pointers), explicit padding fields, and a compile-time size
//!   assertion;
//! * event kind numbers are never reused: a retired kind keeps its number.
#![no_std]

pub mod config;
pub mod event;
pub mod policy;

pub use config::*;
pub use event::*;
