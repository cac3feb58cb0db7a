//! The mounted tree, built once from the authenticated manifest: one inode per entry (a hard
//! link shares its file's), each directory's children sorted by name.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::crypto::NameKey;
use crate::error::{Error, Result};
use crate::format::manifest::{Entry, EntryKind, FileEntry, Name};

/// The preferred I/O size shown (`st_blksize`): readers such as `cat` and `cp` size their
/// buffers by it, and one FUSE request carries up to 1 MiB (the kernel's default
/// `fs.fuse.max_pages_limit`), so a whole-file read costs an eighth of the round trips it
/// did at 128 KiB (docs/PERFORMANCE.md "Mount"). glibc's stdio never takes more than its
/// own 8 KiB from it.
const PREFERRED_IO_BYTES: u32 = 1 << 20;

/// The root's inode (FUSE's).
const ROOT: u64 = 1;

pub enum Content {
    /// Children by name (sorted), with their inodes.
    Dir(Vec<(Vec<u8>, u64)>),
    File(FileEntry),
    Symlink(Vec<u8>),
    Fifo,
    CharDev(u64),
    BlockDev(u64),
}

pub struct Node {
    pub parent: u64,
    /// The first name it was stored under (for messages).
    path: Vec<u8>,
    pub content: Content,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    nlink: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct Tree {
    /// Inode `i` is `nodes[i - 1]`.
    nodes: Vec<Node>,
    /// Bytes of all files (for `statfs`).
    pub bytes: u64,
}

fn bad(why: String) -> Error {
    Error::integrity("manifest", why)
}

fn clear(n: &Name) -> Result<&[u8]> {
    n.clear()
        .ok_or_else(|| bad("a concealed name was not revealed".into()))
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), 0);
    let t = match secs >= 0 {
        true => UNIX_EPOCH + d,
        false => UNIX_EPOCH - d,
    };
    t + Duration::from_nanos(u64::from(nsec))
}

impl Tree {
    /// The tree of `entries` (tree order: parents before children, no path twice, as the
    /// manifest reader checks). Attributes are opened with `nk` (batch 0's name key).
    pub fn build(entries: Vec<Entry>, nk: Option<&NameKey>) -> Result<Tree> {
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let mut nodes = vec![Node {
            parent: ROOT,
            path: Vec::new(),
            content: Content::Dir(Vec::new()),
            mode: 0o755,
            uid: me.0,
            gid: me.1,
            mtime: SystemTime::now(),
            nlink: 2,
            xattrs: Vec::new(),
        }];
        let mut by_path: HashMap<Vec<u8>, u64> = HashMap::new();
        by_path.insert(Vec::new(), ROOT);
        let mut bytes = 0u64;
        for e in entries {
            let path = clear(&e.path)?.to_vec();
            let (parent_path, name) = match path.iter().rposition(|&b| b == b'/') {
                Some(k) => (&path[..k], &path[k + 1..]),
                None => (&path[..0], &path[..]),
            };
            let show = || String::from_utf8_lossy(&path).into_owned();
            let parent = *by_path
                .get(parent_path)
                .ok_or_else(|| bad(format!("{}: its directory is not in the vault", show())))?;
            let ino = if let EntryKind::HardLink(t) = &e.kind {
                let target = *by_path.get(clear(t)?).ok_or_else(|| {
                    bad(format!("{}: links to a path not stored before it", show()))
                })?;
                nodes[target as usize - 1].nlink += 1;
                target
            } else {
                let content = match e.kind {
                    EntryKind::Dir => Content::Dir(Vec::new()),
                    EntryKind::File(f) => {
                        bytes = bytes.saturating_add(f.file_len());
                        Content::File(f)
                    }
                    EntryKind::Symlink(t) => Content::Symlink(clear(&t)?.to_vec()),
                    EntryKind::Fifo => Content::Fifo,
                    EntryKind::CharDev(d) => Content::CharDev(d),
                    EntryKind::BlockDev(d) => Content::BlockDev(d),
                    EntryKind::HardLink(_) => unreachable!("handled above"),
                };
                let xattrs = match nk {
                    Some(nk) => e.xattrs.open(nk)?,
                    None => Vec::new(),
                };
                let (uid, gid) = e.owner.as_ref().map_or(me, |o| (o.uid, o.gid));
                let dir = matches!(content, Content::Dir(_));
                nodes.push(Node {
                    parent,
                    path: path.clone(),
                    content,
                    mode: e.mode & 0o7777,
                    uid,
                    gid,
                    mtime: time(e.mtime, e.mtime_nsec),
                    nlink: if dir { 2 } else { 1 },
                    xattrs,
                });
                let ino = nodes.len() as u64;
                if dir {
                    nodes[parent as usize - 1].nlink += 1;
                }
                ino
            };
            match &mut nodes[parent as usize - 1].content {
                Content::Dir(children) => children.push((name.to_vec(), ino)),
                _ => return Err(bad(format!("{}: its parent is not a directory", show()))),
            }
            by_path.insert(path, ino);
        }
        for n in &mut nodes {
            if let Content::Dir(children) = &mut n.content {
                children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
        }
        Ok(Tree { nodes, bytes })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }

    /// The path of `ino` in the vault, for messages.
    pub fn path(&self, ino: u64) -> String {
        self.node(ino)
            .map(|n| String::from_utf8_lossy(&n.path).into_owned())
            .unwrap_or_default()
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let Content::Dir(children) = &self.node(parent)?.content else {
            return None;
        };
        let k = children
            .binary_search_by(|c| c.0.as_slice().cmp(name))
            .ok()?;
        Some(children[k].1)
    }

    pub fn kind(&self, ino: u64) -> FileType {
        match self.node(ino).map(|n| &n.content) {
            Some(Content::Dir(_)) | None => FileType::Directory,
            Some(Content::File(_)) => FileType::RegularFile,
            Some(Content::Symlink(_)) => FileType::Symlink,
            Some(Content::Fifo) => FileType::NamedPipe,
            Some(Content::CharDev(_)) => FileType::CharDevice,
            Some(Content::BlockDev(_)) => FileType::BlockDevice,
        }
    }

    pub fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.node(ino)?;
        let (size, blocks, rdev) = match &n.content {
            Content::File(f) => (f.file_len(), f.size.div_ceil(512), 0),
            Content::Symlink(t) => (t.len() as u64, 0, 0),
            Content::Dir(c) => (c.len() as u64, 0, 0),
            Content::CharDev(d) | Content::BlockDev(d) => (0, 0, fuse_dev(*d)),
            Content::Fifo => (0, 0, 0),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: self.kind(ino),
            perm: n.mode as u16,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev,
            blksize: PREFERRED_IO_BYTES,
            flags: 0,
        })
    }
}

/// A device number in FUSE's 32-bit encoding (the kernel's `new_encode_dev`).
fn fuse_dev(d: u64) -> u32 {
    let (major, minor) = (libc::major(d), libc::minor(d));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::Owner;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: Name::Clear(path.as_bytes().to_vec()),
            mode: 0o4750,
            mtime: -5,
            mtime_nsec: 7,
            kind,
            owner: Some(Owner {
                uid: 1234,
                gid: 99,
                user: None,
                group: None,
            }),
            linked: false,
            xattrs: Default::default(),
        }
    }

    /// Hard links share their file's inode and count; children are found by name; modes,
    /// owners and times before 1970 are as recorded.
    #[test]
    fn links_share_an_inode_and_attributes_are_recorded_ones() {
        let file = FileEntry {
            size: 3,
            batch: 0,
            obj: 0,
            off: 0,
            salt: [0; crate::format::SALT_LEN],
            ct: [0; 32],
            pt: [0; 32],
            sparse: None,
            rlen: None,
        };
        let t = Tree::build(
            vec![
                entry("d", EntryKind::Dir),
                entry("d/b", EntryKind::File(file)),
                entry("d/sub", EntryKind::Dir),
                entry("a", EntryKind::HardLink(Name::Clear(b"d/b".to_vec()))),
                entry("s", EntryKind::Symlink(Name::Clear(b"d/b".to_vec()))),
            ],
            None,
        )
        .unwrap();
        let d = t.lookup(ROOT, b"d").unwrap();
        let b = t.lookup(d, b"b").unwrap();
        assert_eq!(t.lookup(ROOT, b"a"), Some(b));
        assert_eq!(t.lookup(ROOT, b"zz"), None);
        let a = t.attr(b).unwrap();
        assert_eq!(
            (a.nlink, a.size, a.perm, a.uid, a.gid),
            (2, 3, 0o4750, 1234, 99)
        );
        assert_eq!(
            a.mtime,
            UNIX_EPOCH - Duration::new(5, 0) + Duration::from_nanos(7)
        );
        assert_eq!(t.attr(d).unwrap().nlink, 3);
        assert_eq!(t.kind(t.lookup(ROOT, b"s").unwrap()), FileType::Symlink);
        let Content::Dir(c) = &t.node(ROOT).unwrap().content else {
            panic!()
        };
        let names: Vec<&[u8]> = c.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [&b"a"[..], b"d", b"s"]);
    }

    #[test]
    fn a_child_of_a_missing_directory_is_refused() {
        let r = Tree::build(vec![entry("x/y", EntryKind::Dir)], None);
        assert!(r.is_err());
    }
}
