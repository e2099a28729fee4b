//! A sandbox's `resolv.conf` and `hosts`.
//!
//! For a named sandbox wharf writes them to `/etc/netns/NAME/` (configurable), where
//! `ip netns exec NAME` bind-mounts them over `/etc/resolv.conf` and `/etc/hosts`; for every
//! sandbox it also returns their contents, for runtimes that bind-mount files themselves.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The two files of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxFiles {
    /// The text of its `resolv.conf`.
    pub resolv_conf: String,
    /// The text of its `hosts`.
    pub hosts: String,
}

/// Docker's `hosts` for a container: the loopback and IPv6 boilerplate, then one line per
/// address of the container naming its hostname.
pub fn render_hosts(hostname: &str, addresses: &[IpAddr]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for ip in addresses {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// Writes `contents` to `path` in place, mode 0644 so that processes of any user in the
/// container can read it.
///
/// In place, as Docker rewrites a container's `hosts`: the file keeps its inode, so a
/// bind mount of it (what `ip netns exec` and runtimes make) sees the new text. A replaced file
/// (temporary file and rename) would leave every existing bind mount on the old inode, stale
/// for good. The new text is written over the old in one call and the file then cut to its
/// length, so a reader never sees it empty; as `hosts` mostly grows, it rarely sees a tail of
/// the old. Not fsynced: the files are derived from the state store and rewritten from it, so a
/// crash cannot lose anything they hold.
pub(crate) fn write_in_place(path: &Path, contents: &str) -> std::io::Result<()> {
    // Most changes touch one of the two files (a connect changes `hosts`, rarely
    // `resolv.conf`): leave an identical file alone.
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.set_len(contents.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_keep_the_inode_and_cut_the_old_tail() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sb").join("hosts");
        write_in_place(&path, "a long first version\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_in_place(&path, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn hosts_names_the_container_on_each_address() {
        let text = render_hosts("alpine1", &["172.17.0.2".parse().unwrap()]);
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("172.17.0.2\talpine1\n"));
    }
}
