//! Examples live in `examples/`; run one with `cargo run -p dirk-examples --example NAME`.
