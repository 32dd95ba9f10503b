mod common;
mod datadeps;
mod eventlog;
mod placement;
mod scheduling;
mod worker;
