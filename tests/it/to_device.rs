//! `decrypt --only IMAGE --to-device TARGET`: an image written back in place onto an existing
//! file or (as root) a loop device; too small, in use, and tampered targets.

use crate::common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::{code, encrypt_ok, files_under, flip_byte, gen_file};
use common::{envseal, stderr};

/// A vault holding `img` (3 MiB in 64 KiB segments, so a large-file object of its own).
fn vault_of_image(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let home = t.join("home");
    let img = t.join("img");
    gen_file(&img, 3 << 20, 11);
    let vault = t.join("vault");
    encrypt_ok(&home, &img, &vault, &["--segment-size", "64KiB"]);
    (home, img, vault)
}

fn to_device(home: &Path, vault: &Path, target: &Path) -> std::process::Output {
    envseal(home)
        .args(["decrypt", "-q", "--only", "img", "--to-device"])
        .arg(target)
        .arg(vault)
        .output()
        .unwrap()
}

#[test]
fn an_image_is_written_in_place_onto_a_larger_file() {
    let t = tempfile::tempdir().unwrap();
    let (home, img, vault) = vault_of_image(t.path());
    let target = t.path().join("disk");
    fs::write(&target, vec![0xAAu8; 4 << 20]).unwrap();
    let o = to_device(&home, &vault, &target);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = fs::read(&target).unwrap();
    assert!(got[..3 << 20] == fs::read(&img).unwrap()[..], "image bytes");
    assert!(
        got[3 << 20..].iter().all(|&b| b == 0xAA),
        "the rest untouched"
    );

    // Too small, missing, or not an image: refused before anything is written.
    let small = t.path().join("small");
    fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let o = to_device(&home, &vault, &small);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("smaller than img"), "{}", stderr(&o));
    assert!(fs::read(&small).unwrap().iter().all(|&b| b == 0));
    let o = to_device(&home, &vault, &t.path().join("absent"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = envseal(&home)
        .args(["decrypt", "-q", "--to-device"])
        .arg(&target)
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("exactly one --only"), "{}", stderr(&o));
}

#[test]
fn a_tampered_segment_stops_with_exit_3_and_says_what_is_left() {
    let t = tempfile::tempdir().unwrap();
    let (home, _img, vault) = vault_of_image(t.path());
    // The image's object: the only object of the vault; flip a byte well inside it.
    let objects = files_under(&vault.join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    flip_byte(&vault.join("objects").join(&objects[0]), 2 << 20);
    let target = t.path().join("disk");
    fs::write(&target, vec![0u8; 3 << 20]).unwrap();
    let o = to_device(&home, &vault, &target);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds part of the image"),
        "{}",
        stderr(&o)
    );
}

/// As root with a loop device: the device gets the image's bytes; a device held open
/// exclusively elsewhere (as a mount would) is refused.
#[test]
fn an_image_is_written_back_onto_a_loop_device() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: no loop device, skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (home, img, vault) = vault_of_image(t.path());
    let backing = t.path().join("backing");
    fs::write(&backing, vec![0u8; 4 << 20]).unwrap();
    let Ok(out) = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
    else {
        eprintln!("losetup not available: skipped");
        return;
    };
    if !out.status.success() {
        eprintln!(
            "no loop device here ({}): skipped",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(dev.clone());

    {
        // Held exclusively (as by a mount): refused, nothing written.
        let _held = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
            .unwrap();
        let o = to_device(&home, &vault, &dev);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("mounted or in use"), "{}", stderr(&o));
    }
    let o = to_device(&home, &vault, &dev);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = fs::read(&dev).unwrap();
    assert!(
        got[..3 << 20] == fs::read(&img).unwrap()[..],
        "device bytes"
    );
}

/// A loop device bound to `file` (detached on drop), or `None` (with a notice) where this
/// test cannot make one (not root, no loop support).
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: no loop device, skipped");
            return None;
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "no loop device here ({}): skipped",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Loop(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The usual names of a block device are symlinks (`/dev/mapper/*`, `/dev/disk/by-id/*`,
/// `/dev/VG/LV`): one is resolved and the device it names written.
#[test]
fn a_symlink_to_a_block_device_is_accepted() {
    let t = tempfile::tempdir().unwrap();
    let backing = t.path().join("backing");
    fs::write(&backing, vec![0u8; 4 << 20]).unwrap();
    let Some(dev) = Loop::attach(&backing) else {
        return;
    };
    let (home, img, vault) = vault_of_image(t.path());
    let link = t.path().join("by-id-disk");
    std::os::unix::fs::symlink(&dev.0, &link).unwrap();
    let o = to_device(&home, &vault, &link);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = fs::read(&dev.0).unwrap();
    assert!(
        got[..3 << 20] == fs::read(&img).unwrap()[..],
        "device bytes"
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A mounted filesystem on a loop device: a second loop device on the same backing file,
/// and the backing file itself (also named through a symlink), are refused before a byte
/// is written; the filesystem stays intact.
#[test]
fn a_target_sharing_its_bytes_with_a_mounted_filesystem_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let backing = t.path().join("fs.img");
    fs::write(&backing, vec![0u8; 8 << 20]).unwrap();
    let Some(first) = Loop::attach(&backing) else {
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&first.0)
        .status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("no mkfs.ext4: skipped");
        return;
    }
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "noatime"])
        .arg(&first.0)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount");
    let _mounted = Mounted(mnt.clone());
    fs::write(mnt.join("keep.txt"), b"still here\n").unwrap();
    let Some(second) = Loop::attach(&backing) else {
        return;
    };
    let (home, _img, vault) = vault_of_image(t.path());
    // Written back through the loop device, so that the file stays as it is from here on.
    assert!(Command::new("sync").status().unwrap().success());
    let before = fs::read(&backing).unwrap();
    let link = t.path().join("link-to-image");
    std::os::unix::fs::symlink(&backing, &link).unwrap();
    for target in [&second.0, &backing, &link] {
        let o = to_device(&home, &vault, target);
        assert_eq!(code(&o), 2, "{}: {}", target.display(), stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("in use"), "{e}");
        assert!(e.contains(&first.0.display().to_string()), "{e}");
        assert!(e.contains("mounted at"), "{e}");
    }
    assert!(
        fs::read(&backing).unwrap() == before,
        "the image was written"
    );
    assert_eq!(fs::read(mnt.join("keep.txt")).unwrap(), b"still here\n");
}
