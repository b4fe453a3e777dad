//! The `spawn` message from the agent to its fence: the one type both sides
//! of the pipe share (the agent in `fence/mod.rs` builds it, the fence process
//! in `fence/process.rs` executes it).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use matriarch_postgres::PostmasterSpec;
use serde::{Deserialize, Serialize};

/// A `spawn` request: a [`PostmasterSpec`] on the pipe (paths as bytes, so
/// that any path goes through JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SpawnRequest {
    pub(super) program: Vec<u8>,
    pub(super) args: Vec<Vec<u8>>,
    pub(super) env: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) cwd: Vec<u8>,
    pub(super) log: Vec<u8>,
    pub(super) identity: Option<(u32, u32)>,
}

impl SpawnRequest {
    pub(super) fn from_spec(spec: &PostmasterSpec) -> Result<SpawnRequest, String> {
        let bytes = |s: &std::ffi::OsStr| s.as_bytes().to_vec();
        let request = SpawnRequest {
            program: bytes(spec.program.as_os_str()),
            args: spec.args.iter().map(|a| bytes(a.as_os_str())).collect(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (bytes(k.as_os_str()), bytes(v.as_os_str())))
                .collect(),
            cwd: bytes(spec.cwd.as_os_str()),
            log: bytes(spec.log.as_os_str()),
            identity: spec.identity,
        };
        // Checked here so that the fence never gets one it cannot exec.
        request.log_path()?;
        Ok(request)
    }

    pub(super) fn log_path(&self) -> Result<CString, String> {
        CString::new(self.log.clone())
            .map_err(|_| "the server log path holds a NUL byte".to_owned())
    }
}
