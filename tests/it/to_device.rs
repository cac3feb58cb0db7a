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
