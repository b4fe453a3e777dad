//! OS users as the user database knows them: whom PostgreSQL's server
//! programs run as (matriarch-postgres's controller, and matriarch-testkit's
//! servers). A crate of its own, below both, so that the testkit, which
//! matriarch-postgres's tests use, does not depend on matriarch-postgres.

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;

/// An OS user's name, ids and home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsIdentity {
    /// The user name.
    pub name: String,
    /// The numeric user id.
    pub uid: u32,
    /// The numeric primary group id.
    pub gid: u32,
    /// The home directory (`/` when the user database names none).
    pub home: PathBuf,
}

impl OsIdentity {
    /// Looks `name` up in the user database (`getpwnam_r(3)`); `None` when
    /// there is no such user. A name holding a NUL byte is
    /// [`io::ErrorKind::InvalidInput`].
    pub fn lookup(name: &str) -> io::Result<Option<OsIdentity>> {
        let cname = CString::new(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("OS user name {name:?} holds a NUL byte"),
            )
        })?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives every use of pwd.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: getpwnam_r succeeded, so pw_dir is a C string inside buf.
            PathBuf::from(
                unsafe { CStr::from_ptr(pwd.pw_dir) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        Ok(Some(OsIdentity {
            name: name.to_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }))
    }

    /// The user this process runs as (its effective ids), named by `$USER`
    /// (`uid N` without it), with `$HOME` (or `/`) as home.
    pub fn current() -> OsIdentity {
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        OsIdentity {
            name: std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}")),
            uid,
            gid,
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    /// Whether this process runs as root (effective uid 0).
    pub fn running_as_root() -> bool {
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_uid_zero() {
        let root = OsIdentity::lookup("root")
            .expect("lookup")
            .expect("every Linux user database has root");
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0));
    }

    #[test]
    fn an_unknown_user_is_none_and_a_nul_byte_is_invalid_input() {
        let unknown = OsIdentity::lookup("matriarch-no-such-user").expect("lookup");
        assert_eq!(unknown, None);
        let err = OsIdentity::lookup("post\0gres").expect_err("a NUL byte");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_current_user_has_this_process_effective_uid() {
        // SAFETY: geteuid cannot fail and touches no memory.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(OsIdentity::current().uid, euid);
        assert_eq!(OsIdentity::running_as_root(), euid == 0);
    }
}
