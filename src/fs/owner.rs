//! Owners: recorded by id and name at encrypt, mapped back at decrypt (docs/FORMAT.md §6.1).
//!
//! As GNU tar: a restore run as root gives entries their recorded owners, by name where this
//! machine knows the name (`--numeric-owner`: by id), else by id; any other user keeps
//! ownership of what it creates. Lookups go through the C library (NSS), once per id or name.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{LazyLock, Mutex};

use crate::format::manifest::Owner;

#[derive(Default)]
struct Cache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// The owner record of a source with these ids.
pub fn owner_of(uid: u32, gid: u32) -> Owner {
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let user = c.users.entry(uid).or_insert_with(|| user_name(uid)).clone();
    let group = c
        .groups
        .entry(gid)
        .or_insert_with(|| group_name(gid))
        .clone();
    Owner {
        uid,
        gid,
        user,
        group,
    }
}

/// The ids to give a restored entry on this machine: by name unless `numeric` or unknown here.
pub fn local_ids(o: &Owner, numeric: bool) -> (u32, u32) {
    if numeric {
        return (o.uid, o.gid);
    }
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let uid = o
        .user
        .as_ref()
        .and_then(|n| *c.uids.entry(n.clone()).or_insert_with(|| user_id(n)))
        .unwrap_or(o.uid);
    let gid = o
        .group
        .as_ref()
        .and_then(|n| *c.gids.entry(n.clone()).or_insert_with(|| group_id(n)))
        .unwrap_or(o.gid);
    (uid, gid)
}

/// Whether this process may give files away (root, as `tar -p` assumes).
pub fn can_chown() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a `get*_r` lookup with a growing buffer; `None` when there is no such entry.
fn lookup<T>(
    mut call: impl FnMut(&mut [libc::c_char], &mut *mut T) -> libc::c_int,
    mut name_of: impl FnMut(&T) -> Option<String>,
) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut out: *mut T = std::ptr::null_mut();
        let r = call(&mut buf, &mut out);
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || out.is_null() {
            return None;
        }
        // SAFETY: on success `out` points at the record the call filled in, backed by `buf`.
        return name_of(unsafe { &*out });
    }
}

fn c_name(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: NSS records hold NUL-terminated names.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().ok().filter(|n| !n.is_empty()).map(str::to_owned)
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: zeroed passwd is a valid out-parameter; buf and out are valid for the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let pwp: *mut libc::passwd = &mut pw;
    lookup(
        |buf, out| unsafe { libc::getpwuid_r(uid, pwp, buf.as_mut_ptr(), buf.len(), out) },
        |p: &libc::passwd| c_name(p.pw_name),
    )
}

fn group_name(gid: u32) -> Option<String> {
    // SAFETY: as in user_name.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let grp: *mut libc::group = &mut gr;
    lookup(
        |buf, out| unsafe { libc::getgrgid_r(gid, grp, buf.as_mut_ptr(), buf.len(), out) },
        |g: &libc::group| c_name(g.gr_name),
    )
}

fn user_id(name: &str) -> Option<u32> {
    let n = CString::new(name).ok()?;
    // SAFETY: as in user_name.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let pwp: *mut libc::passwd = &mut pw;
    let mut uid = None;
    lookup(
        |buf, out| unsafe { libc::getpwnam_r(n.as_ptr(), pwp, buf.as_mut_ptr(), buf.len(), out) },
        |p: &libc::passwd| {
            uid = Some(p.pw_uid);
            None
        },
    );
    uid
}

fn group_id(name: &str) -> Option<u32> {
    let n = CString::new(name).ok()?;
    // SAFETY: as in user_name.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let grp: *mut libc::group = &mut gr;
    let mut gid = None;
    lookup(
        |buf, out| unsafe { libc::getgrnam_r(n.as_ptr(), grp, buf.as_mut_ptr(), buf.len(), out) },
        |g: &libc::group| {
            gid = Some(g.gr_gid);
            None
        },
    );
    gid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_maps_back() {
        let o = owner_of(0, 0);
        assert_eq!(o.user.as_deref(), Some("root"));
        assert_eq!(local_ids(&o, false), (0, 0));
        // A name unknown here falls back to the recorded ids.
        let stranger = Owner {
            uid: 4321,
            gid: 8765,
            user: Some("no-such-user-envseal".into()),
            group: Some("no-such-group-envseal".into()),
        };
        assert_eq!(local_ids(&stranger, false), (4321, 8765));
        // A known name wins over the id unless numeric.
        let renamed = Owner {
            uid: 4321,
            gid: 8765,
            user: Some("root".into()),
            group: Some("root".into()),
        };
        assert_eq!(local_ids(&renamed, false), (0, 0));
        assert_eq!(local_ids(&renamed, true), (4321, 8765));
    }
}
