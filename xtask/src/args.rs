//! The small argument checks the subcommands share.

use crate::cmd::{Failure, Result};

/// Fails unless `cargo xtask <cmd>` was given no arguments.
pub(crate) fn no_args(cmd: &str, rest: &[String]) -> Result {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!("`{cmd}` takes no arguments, got {rest:?}")))
    }
}

/// Whether `args` is `[flag]` (`true`) or empty (`false`); anything else is a
/// usage error of `cargo xtask <cmd>`.
pub(crate) fn only_flag(cmd: &str, flag: &str, args: &[String]) -> Result<bool> {
    match args {
        [] => Ok(false),
        [given] if given == flag => Ok(true),
        other => Err(Failure(format!(
            "`{cmd}` takes only `{flag}`, got {other:?}"
        ))),
    }
}
