//! Why a `ctl` command did not succeed, and its exit code.

/// Why a command did not succeed.
#[derive(Debug, PartialEq)]
pub(crate) enum CtlError {
    /// Bad arguments: exit code 2.
    Usage(String),
    /// Refused or failed: exit code 1.
    Failed(String),
}
