//! wharf
