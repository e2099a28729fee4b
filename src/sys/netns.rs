//! Network namespaces: create, open, delete, and run code inside one.
//!
//! A [`NetNs`] is an open file descriptor on a network namespace, so it stays valid even if the
//! namespace's name is unmounted while wharf holds it. Named namespaces live where `ip netns`
//! keeps them (`/run/netns/NAME`, bind mounts of the namespace file), so `ip netns exec NAME`
//! enters what wharf creates.
//!
//! Entering a namespace changes the calling *thread*. wharf therefore never enters one on a
//! caller's thread or a tokio worker: [`NetNs::run`] starts a short-lived dedicated thread, enters
//! the namespace there, runs a closure (typically one that opens a socket, which stays bound to
//! that namespace for its whole life) and hands the result back. The thread then exits, so no
//! thread of the process is ever left in a foreign namespace.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::error::{SysError, SysResult};

/// Where named network namespaces are bind-mounted, as `ip netns` does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The longest namespace name accepted (a file name under [`NETNS_RUN_DIR`]).
pub const MAX_NETNS_NAME_LEN: usize = 200;

/// An open network namespace.
///
/// Cloning is cheap (the descriptor is shared). The namespace stays alive while a `NetNs` for it
/// exists, even after [`NetNs::delete`] removed its name.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf::sys::SysError> {
/// use wharf::sys::NetNs;
/// let ns = NetNs::create("demo").await?;          // like `ip netns add demo`, loopback up
/// let n = ns.run(|| std::fs::read_to_string("/proc/self/net/dev")).await?;
/// println!("{}", n.unwrap_or_default());
/// NetNs::delete("demo")?;                          // like `ip netns del demo`
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NetNs {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    path: PathBuf,
    name: Option<String>,
    ino: u64,
    dev: u64,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs")
            .field("path", &self.inner.path)
            .field("ino", &self.inner.ino)
            .finish()
    }
}

impl std::fmt::Display for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner.name {
            Some(name) => write!(f, "namespace {name:?}"),
            None => write!(f, "namespace {}", self.inner.path.display()),
        }
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.inner.ino == other.inner.ino && self.inner.dev == other.inner.dev
    }
}
impl Eq for NetNs {}

/// Checks that `name` can be a namespace name: a single path component under `/run/netns`.
///
/// ```
/// use wharf::sys::netns::validate_name;
/// assert!(validate_name("alpine1").is_ok());
/// assert!(validate_name("../etc").is_err());
/// ```
pub fn validate_name(name: &str) -> SysResult<()> {
    let bad = |reason| {
        Err(SysError::InvalidName {
            what: "naming a network namespace".into(),
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NETNS_NAME_LEN {
        return bad("longer than 200 bytes");
    }
    if name == "." || name == ".." {
        return bad("a path component");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == 0 || b.is_ascii_control() || b.is_ascii_whitespace())
    {
        return bad("contains '/', whitespace, NUL or a control character");
    }
    Ok(())
}

impl NetNs {
    /// The namespace the process runs in (that of its main thread).
    pub fn current() -> SysResult<Self> {
        Self::open_path("/proc/self/ns/net")
    }

    /// Opens the named namespace `/run/netns/NAME`.
    pub fn open(name: &str) -> SysResult<Self> {
        validate_name(name)?;
        let mut ns = Self::open_path(Path::new(NETNS_RUN_DIR).join(name))?;
        if let Some(inner) = Arc::get_mut(&mut ns.inner) {
            inner.name = Some(name.to_owned());
        }
        Ok(ns)
    }

    /// Opens a namespace by the path of its file (`/proc/PID/ns/net`, a bind mount, ...).
    pub fn open_path(path: impl AsRef<Path>) -> SysResult<Self> {
        let path = path.as_ref();
        let what = || format!("opening network namespace {}", path.display());
        let file = File::open(path).map_err(|e| SysError::from_io(what(), e))?;
        Self::from_file(file, path.to_owned(), None, what)
    }

    fn from_file(
        file: File,
        path: PathBuf,
        name: Option<String>,
        what: impl Fn() -> String,
    ) -> SysResult<Self> {
        let meta = file.metadata().map_err(|e| SysError::from_io(what(), e))?;
        // A namespace file is on nsfs; anything else is a mistake (a typo'd path, an ordinary
        // file) that setns would reject later with a less helpful message.
        if !Self::nsfs_kind_is_net(&file) {
            return Err(SysError::InvalidArgument {
                what: format!("{}: not a network namespace file", what()),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                ino: meta.ino(),
                dev: meta.dev(),
                fd: file.into(),
                path,
                name,
            }),
        })
    }

    /// Whether `file` is a network namespace: `NS_GET_NSTYPE` answers `CLONE_NEWNET`.
    fn nsfs_kind_is_net(file: &File) -> bool {
        // _IO(0xb7, 0x3), see linux/nsfs.h.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's inode.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        kind == libc::CLONE_NEWNET
    }

    /// Creates the named namespace `/run/netns/NAME` with its loopback up, as `ip netns add`
    /// does (plus `ip link set lo up`).
    ///
    /// Fails with [`SysError::AlreadyExists`] if the name is taken; on any failure nothing is
    /// left behind.
    pub async fn create(name: &str) -> SysResult<Self> {
        validate_name(name)?;
        let name = name.to_owned();
        on_dedicated_thread(move || create_blocking(&name)).await
    }

    /// [`NetNs::create`] for callers outside an async runtime. Blocks while a dedicated thread
    /// does the work.
    pub fn create_sync(name: &str) -> SysResult<Self> {
        validate_name(name)?;
        let name = name.to_owned();
        join_dedicated_thread(move || create_blocking(&name))
    }

    /// Removes the name of the namespace `/run/netns/NAME` (unmount and unlink), as
    /// `ip netns del` does. The namespace itself disappears, with every interface in it, once
    /// nothing holds it any more (no process inside, no open [`NetNs`]).
    ///
    /// This needs no namespace switch and is safe to call from any thread, including `Drop`.
    pub fn delete(name: &str) -> SysResult<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let what = || format!("deleting network namespace {name:?}");
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a stale file); still unlink it.
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(SysError::from_nix(what(), e)),
        }
        std::fs::remove_file(&path).map_err(|e| SysError::from_io(what(), e))
    }

    /// Lists the names under `/run/netns`.
    pub fn list_named() -> SysResult<Vec<String>> {
        let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SysError::from_io("listing network namespaces", e)),
        };
        let mut names: Vec<String> = dir
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The name, if opened or created by name.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The open descriptor (for `IFLA_NET_NS_FD` and the like).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// The namespace's inode number: equal for two handles on the same namespace.
    pub fn inode(&self) -> u64 {
        self.inner.ino
    }

    /// Runs `f` on a dedicated thread that has entered this namespace, and returns its result.
    ///
    /// Anything `f` creates that is bound to a namespace (a socket, a netlink connection)
    /// stays in this namespace after the thread is gone. A panic in `f` is resumed in the caller.
    pub async fn run<F, R>(&self, f: F) -> SysResult<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        on_dedicated_thread(move || {
            ns.enter_this_thread()?;
            Ok(f())
        })
        .await
    }

    /// [`NetNs::run`] for callers outside an async runtime (blocks the calling thread until the
    /// dedicated thread is done; the calling thread itself never changes namespace).
    pub fn run_sync<F, R>(&self, f: F) -> SysResult<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        join_dedicated_thread(move || {
            ns.enter_this_thread()?;
            Ok(f())
        })
    }

    /// A `Command` whose child process starts inside this namespace (like `ip netns exec`).
    /// Only the child enters the namespace; the caller's threads are untouched.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let ns = self.clone();
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; the descriptor is kept alive by the captured `ns`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.inner.fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    fn enter_this_thread(&self) -> SysResult<()> {
        nix::sched::setns(self.inner.fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| SysError::from_nix(format!("entering {self}"), e))
    }
}

/// Runs `f` on a fresh thread and awaits its result without blocking the runtime.
async fn on_dedicated_thread<F, R>(f: F) -> SysResult<R>
where
    F: FnOnce() -> SysResult<R> + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wharf-netns".into())
        .spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        })
        .map_err(|e| SysError::from_io("starting a namespace thread", e))?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(SysError::Protocol {
            what: "running on a namespace thread".into(),
            detail: "the thread ended without a result".into(),
        }),
    }
}

/// Runs `f` on a fresh thread and blocks until it is done.
fn join_dedicated_thread<F, R>(f: F) -> SysResult<R>
where
    F: FnOnce() -> SysResult<R> + Send + 'static,
    R: Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name("wharf-netns".into())
        .spawn(f)
        .map_err(|e| SysError::from_io("starting a namespace thread", e))?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Serialises the one-time preparation of `/run/netns` as a shared mount point.
static RUN_DIR_READY: Mutex<bool> = Mutex::new(false);

/// Makes `/run/netns` exist and be a shared mount, so that bind mounts made in it propagate to
/// other mount namespaces (as `ip netns add` does).
fn prepare_run_dir() -> SysResult<()> {
    let mut ready = RUN_DIR_READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    let what = || format!("preparing {NETNS_RUN_DIR}");
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| SysError::from_io(what(), e))?;
    let share = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => {}
        // Not a mount point yet: bind it onto itself, then share it.
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| SysError::from_nix(what(), e))?;
            share().map_err(|e| SysError::from_nix(what(), e))?;
        }
        Err(e) => return Err(SysError::from_nix(what(), e)),
    }
    *ready = true;
    Ok(())
}

/// The body of [`NetNs::create`]; runs on a dedicated thread that it moves into the new
/// namespace.
fn create_blocking(name: &str) -> SysResult<NetNs> {
    prepare_run_dir()?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let what = || format!("creating network namespace {name:?}");
    // The mount target; O_EXCL makes a taken name an error instead of a silent reuse.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| SysError::from_io(what(), e))?;
    let made = (|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| SysError::from_nix(what(), e))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| SysError::from_nix(what(), e))?;
        set_loopback_up().map_err(|e| SysError::from_io(format!("{}: loopback up", what()), e))?;
        let file = File::open(&path).map_err(|e| SysError::from_io(what(), e))?;
        NetNs::from_file(file, path.clone(), Some(name.to_owned()), what)
    })();
    if made.is_err() {
        let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Brings `lo` up in the calling thread's namespace (SIOCSIFFLAGS on a throwaway socket).
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name we fill in; the descriptor
    // is owned and closed by `OwnedFd`.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "a b", &"x".repeat(201)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["alpine1", "wharf-lab-1.host", &"x".repeat(200)] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }
}
