use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::tier::test_util::is_root;

#[test]
fn a_new_file_is_created_owner_only_whatever_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    let o = open(&p, true, 0, Sharing::default()).unwrap();
    assert!(o.created);
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let again = open(&p, true, 0, Sharing::default()).unwrap();
    assert!(!again.created, "an existing file is joined, not recreated");
}

#[test]
fn a_symlink_is_refused_and_its_target_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("tierkv-x.arena");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = open(&link, true, 0, Sharing::default()).err().unwrap();
    assert!(matches!(e, SharedFileError::Symlink(_)), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    // A dangling link is refused too (O_EXCL never creates through it).
    let dangling = d.path().join("tierkv-y.arena");
    std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
    assert!(open(&dangling, true, 0, Sharing::default()).is_err());
    assert!(!d.path().join("nowhere").exists());
}

#[test]
fn a_world_or_group_writable_file_is_refused_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    drop(open(&p, true, 0, Sharing::default()).unwrap());
    for mode in [0o666, 0o620, 0o604] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = open(&p, true, 0, Sharing::default()).err().unwrap();
        let msg = e.to_string();
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("TIERKV_SHARE_GROUP"), "{msg}");
    }
}

#[test]
fn a_foreign_owned_file_is_refused() {
    if !is_root() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    drop(open(&p, true, 0, Sharing::default()).unwrap());
    std::os::unix::fs::chown(&p, Some(4242), Some(4242)).unwrap();
    let e = open(&p, true, 0, Sharing::default()).err().unwrap();
    assert!(e.to_string().contains("uid 4242"), "{e}");
}

#[test]
fn a_share_group_allows_its_members_and_creates_0660() {
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let share = Sharing { group: Some(gid) };
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    drop(open(&p, true, 0, share).unwrap());
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), gid);
    assert!(open(&p, false, 0, share).is_ok());
    // Without the group setting the same file is refused (group bits set).
    assert!(open(&p, false, 0, Sharing::default()).is_err());
    // Still never open to others.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
    assert!(open(&p, false, 0, share).is_err());
    if is_root() {
        // Another member's file of the group is joined; another group's is not.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o660)).unwrap();
        std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
        assert!(open(&p, false, 0, share).is_ok());
        std::os::unix::fs::chown(&p, None, Some(4243)).unwrap();
        assert!(open(&p, false, 0, share).is_err());
    }
}

#[test]
fn groups_resolve_by_name_or_number() {
    assert_eq!(resolve_group("0"), Some(0));
    assert_eq!(resolve_group("root"), Some(0));
    assert_eq!(resolve_group("no-such-group-tierkv"), None);
}
