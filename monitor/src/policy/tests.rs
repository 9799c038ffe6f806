//! Differential property tests (filled in below).
