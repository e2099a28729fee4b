//! # wharf
//!
//! Docker-grade container networking as an embeddable, typed async Rust library.
//!
//! The crate is layered, bottom to top: [`sys`] (kernel access) is the only layer that talks to
//! the kernel.

#![warn(missing_docs)]

pub mod sys;

pub mod controller;
pub mod dns;
pub mod driver;
pub mod ipam;
pub mod lab;
pub mod store;

/// The README's code, compiled and run as doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
