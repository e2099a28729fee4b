//! Typed errors of the kernel layer.
//!
//! Every error names the operation and the object it was applied to (`creating veth "v1"`), and
//! the kernel's errno is mapped to a variant a caller can match on without knowing errno values.

use std::io;

/// An error from the kernel layer: netlink, nftables, namespaces, sysctls.
///
/// `what` always describes the operation and the object, e.g. `creating bridge "wharf0" in
/// namespace "lab-host"`, so a message read on its own says what failed on what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SysError {
    /// The object already exists (`EEXIST`).
    #[error("{what}: already exists")]
    AlreadyExists {
        /// The operation and object.
        what: String,
    },
    /// The object, or one it refers to, does not exist (`ENOENT`, `ENODEV`, `ESRCH`, `ENXIO`).
    #[error("{what}: not found")]
    NotFound {
        /// The operation and object.
        what: String,
    },
    /// The object is in use (`EBUSY`, `EADDRINUSE`).
    #[error("{what}: busy")]
    Busy {
        /// The operation and object.
        what: String,
    },
    /// The process lacks a capability (`EPERM`, `EACCES`); wharf needs `CAP_NET_ADMIN` and,
    /// for namespaces, `CAP_SYS_ADMIN`.
    #[error("{what}: permission denied (wharf needs CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    PermissionDenied {
        /// The operation and object.
        what: String,
    },
    /// The running kernel does not support the request (`EOPNOTSUPP`, `EAFNOSUPPORT`,
    /// `EPROTONOSUPPORT`, or a missing link kind).
    #[error("{what}: not supported by this kernel")]
    NotSupported {
        /// The operation and object.
        what: String,
    },
    /// The kernel rejected an argument (`EINVAL`, `ERANGE`, `E2BIG`).
    #[error("{what}: invalid argument")]
    InvalidArgument {
        /// The operation and object.
        what: String,
    },
    /// A name was refused before anything was sent to the kernel.
    #[error("{what}: invalid name {name:?}: {reason}")]
    InvalidName {
        /// The operation and object.
        what: String,
        /// The offending name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Any other errno the kernel returned.
    #[error("{what}: {source}")]
    Kernel {
        /// The operation and object.
        what: String,
        /// The errno, as an `io::Error`.
        source: io::Error,
    },
    /// The kernel answered with something wharf did not expect (a malformed or missing reply).
    #[error("{what}: unexpected netlink reply: {detail}")]
    Protocol {
        /// The operation and object.
        what: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

/// The variant of a [`SysError`], for matching without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SysErrorKind {
    /// See [`SysError::AlreadyExists`].
    AlreadyExists,
    /// See [`SysError::NotFound`].
    NotFound,
    /// See [`SysError::Busy`].
    Busy,
    /// See [`SysError::PermissionDenied`].
    PermissionDenied,
    /// See [`SysError::NotSupported`].
    NotSupported,
    /// See [`SysError::InvalidArgument`].
    InvalidArgument,
    /// See [`SysError::InvalidName`].
    InvalidName,
    /// See [`SysError::Kernel`].
    Kernel,
    /// See [`SysError::Protocol`].
    Protocol,
}

impl SysError {
    /// Maps a positive errno value returned by the kernel to a typed error about `what`.
    ///
    /// ```
    /// use wharf::sys::{SysError, SysErrorKind};
    /// let e = SysError::from_errno("creating bridge \"br0\"", libc::EEXIST);
    /// assert_eq!(e.kind(), SysErrorKind::AlreadyExists);
    /// assert_eq!(e.to_string(), "creating bridge \"br0\": already exists");
    /// ```
    pub fn from_errno(what: impl Into<String>, errno: i32) -> Self {
        let what = what.into();
        match errno {
            libc::EEXIST => Self::AlreadyExists { what },
            libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::ENXIO => Self::NotFound { what },
            libc::EBUSY | libc::EADDRINUSE => Self::Busy { what },
            libc::EPERM | libc::EACCES => Self::PermissionDenied { what },
            libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT => {
                Self::NotSupported { what }
            }
            libc::EINVAL | libc::ERANGE | libc::E2BIG => Self::InvalidArgument { what },
            other => Self::Kernel {
                what,
                source: io::Error::from_raw_os_error(other),
            },
        }
    }

    /// Maps an `io::Error` from a system call to a typed error about `what`.
    pub fn from_io(what: impl Into<String>, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => Self::from_errno(what, errno),
            None => Self::Kernel {
                what: what.into(),
                source: err,
            },
        }
    }

    /// Maps a `nix` errno to a typed error about `what`.
    pub fn from_nix(what: impl Into<String>, err: nix::errno::Errno) -> Self {
        Self::from_errno(what, err as i32)
    }

    /// The variant, without its payload.
    pub fn kind(&self) -> SysErrorKind {
        match self {
            Self::AlreadyExists { .. } => SysErrorKind::AlreadyExists,
            Self::NotFound { .. } => SysErrorKind::NotFound,
            Self::Busy { .. } => SysErrorKind::Busy,
            Self::PermissionDenied { .. } => SysErrorKind::PermissionDenied,
            Self::NotSupported { .. } => SysErrorKind::NotSupported,
            Self::InvalidArgument { .. } => SysErrorKind::InvalidArgument,
            Self::InvalidName { .. } => SysErrorKind::InvalidName,
            Self::Kernel { .. } => SysErrorKind::Kernel,
            Self::Protocol { .. } => SysErrorKind::Protocol,
        }
    }

    /// The same error with `context` before the operation it names, for callers that know
    /// what the operation was for: `publishing tcp port 8080 of endpoint "c1": adding 1 element
    /// to map "tcp4_any" of table inet "wharf": busy`.
    pub fn within(mut self, context: impl std::fmt::Display) -> Self {
        let what = match &mut self {
            Self::AlreadyExists { what }
            | Self::NotFound { what }
            | Self::Busy { what }
            | Self::PermissionDenied { what }
            | Self::NotSupported { what }
            | Self::InvalidArgument { what }
            | Self::InvalidName { what, .. }
            | Self::Kernel { what, .. }
            | Self::Protocol { what, .. } => what,
        };
        *what = format!("{context}: {what}");
        self
    }

    /// True when the object did not exist; deletions treat this as success where asked to.
    pub fn is_not_found(&self) -> bool {
        self.kind() == SysErrorKind::NotFound
    }

    /// True when the object already existed.
    pub fn is_already_exists(&self) -> bool {
        self.kind() == SysErrorKind::AlreadyExists
    }
}

/// Result of a kernel-layer operation.
pub type SysResult<T> = Result<T, SysError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let cases = [
            (libc::EEXIST, SysErrorKind::AlreadyExists),
            (libc::ENOENT, SysErrorKind::NotFound),
            (libc::ENODEV, SysErrorKind::NotFound),
            (libc::EBUSY, SysErrorKind::Busy),
            (libc::EPERM, SysErrorKind::PermissionDenied),
            (libc::EOPNOTSUPP, SysErrorKind::NotSupported),
            (libc::EINVAL, SysErrorKind::InvalidArgument),
            (libc::EMFILE, SysErrorKind::Kernel),
        ];
        for (errno, kind) in cases {
            assert_eq!(
                SysError::from_errno("x", errno).kind(),
                kind,
                "errno {errno}"
            );
        }
    }

    #[test]
    fn context_goes_first() {
        let e = SysError::from_errno("adding 1 element to map \"m\"", libc::EBUSY)
            .within("publishing tcp port 80");
        assert_eq!(
            e.to_string(),
            "publishing tcp port 80: adding 1 element to map \"m\": busy"
        );
        assert_eq!(e.kind(), SysErrorKind::Busy);
    }

    #[test]
    fn message_names_the_object() {
        let e = SysError::from_errno("deleting link \"veth0\"", libc::ENODEV);
        assert_eq!(e.to_string(), "deleting link \"veth0\": not found");
        assert!(e.is_not_found());
    }
}
