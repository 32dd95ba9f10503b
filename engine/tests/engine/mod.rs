mod common;
mod datadeps;
mod eventlog;
mod placement;
mod recovery;
mod retry;
mod scheduling;
mod worker;
