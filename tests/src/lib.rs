//! Helpers shared by the cross-process integration tests.
