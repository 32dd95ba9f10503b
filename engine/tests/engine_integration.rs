//! Integration tests of the engine, one module per area.

mod engine;
