//! Integration tests of DTables, the planner and the session, one module per area.

mod dtable;
