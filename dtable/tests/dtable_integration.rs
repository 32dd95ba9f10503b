//! Integration tests of DTables, the planner and the session, one module per area.

/// These sessions run on in-process workers.
const ON_CLUSTER: bool = false;

mod dtable;
