//! Decision engine tests.
