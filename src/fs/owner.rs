//! Owners: recorded by id and name at encrypt, mapped back at decrypt (docs/FORMAT.md §6.1).
//!
//! As GNU tar: a restore run as root gives entries their recorded owners, by name where this
//! machine knows the name (`--numeric-owner`: by id), else by id; any other user keeps
//! ownership of what it creates. Lookups go through the C library (NSS, by `nix`'s safe
//! wrappers of `getpwuid_r` and co.), once per id or name.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use nix::unistd::{Gid, Group, Uid, User};

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
    rustix::process::geteuid().is_root()
}

/// A user or group name as recorded: NSS lookup failures and empty names are `None`, and so
/// is a name that is not UTF-8 (nix reads names lossily; a replacement character means the
/// bytes were not UTF-8, and such a name would not map back by name on restore).
fn recorded(name: String) -> Option<String> {
    Some(name).filter(|n| !n.is_empty() && !n.contains(char::REPLACEMENT_CHARACTER))
}

fn user_name(uid: u32) -> Option<String> {
    let u = User::from_uid(Uid::from_raw(uid)).ok()??;
    recorded(u.name)
}

fn group_name(gid: u32) -> Option<String> {
    let g = Group::from_gid(Gid::from_raw(gid)).ok()??;
    recorded(g.name)
}

fn user_id(name: &str) -> Option<u32> {
    // A name holding NUL is no entry (nix answers `None`).
    Some(User::from_name(name).ok()??.uid.as_raw())
}

fn group_id(name: &str) -> Option<u32> {
    Some(Group::from_name(name).ok()??.gid.as_raw())
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

    #[test]
    fn lookups_answer_none_for_what_is_not_there() {
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!((user_id("root"), group_id("root")), (Some(0), Some(0)));
        assert_eq!(user_name(4_000_000_001), None);
        assert_eq!(group_name(4_000_000_001), None);
        assert_eq!(user_id("ro\0ot"), None);
        assert_eq!(group_id("no-such-group-envseal"), None);
        assert_eq!(recorded(String::new()), None);
        assert_eq!(recorded("b\u{FFFD}b".into()), None);
        assert_eq!(recorded("bob".into()).as_deref(), Some("bob"));
    }
}
