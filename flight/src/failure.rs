//! How a failed call to a worker reads: one line, with its causes; and whether it means the
//! worker's process is gone.

use arrow_flight::error::FlightError;
use tonic::Status;

/// An error and its causes, on one line; a cause whose words are already there is left out.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    with_causes(e.to_string(), e.source())
}

fn with_causes(mut s: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// Whether a call failed because nothing listens at the worker's address any more: its process
/// is gone (a hung or unreachable one times out instead).
pub(crate) fn refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A gRPC status as one line: its message and, for transport failures, their cause.
pub(crate) fn describe(status: &Status) -> String {
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    with_causes(message, std::error::Error::source(status))
}

/// A Flight error as one line.
pub(crate) fn flight(e: FlightError) -> String {
    match e {
        FlightError::Tonic(s) => describe(&s),
        other => other.to_string(),
    }
}
