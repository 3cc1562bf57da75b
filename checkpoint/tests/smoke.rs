use checkpoint::*;
use std::path::Path;

fn write(f: &VmFolder, disk: usize, off: u64, data: &[u8]) {
    let mut d =
        vhdx::Disk::open_writable(&f.disks[disk].path, &vhdx::ChainOptions::default()).unwrap();
    d.write_at(data, off).unwrap();
    d.close().unwrap();
}

fn read(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let d = vhdx::Disk::open(p, &vhdx::ChainOptions::default()).unwrap();
    let mut b = vec![0u8; len];
    d.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn smoke() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    let mut spec = VmSpec::new("web");
    spec.disks.push(DiskSpec::New { size: 64 << 20 });
    let f = VmFolder::create(&dir, &spec).unwrap();
    assert_eq!(f.disks.len(), 1);
    write(&f, 0, 0, b"one");
    let c1 = create(
        &OsFs,
        &dir,
        &CreateOptions {
            name: Some("c1".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(f.current.as_deref(), Some(c1.id.as_str()));
    write(&f, 0, 0, b"two");
    let c2 = create(
        &OsFs,
        &dir,
        &CreateOptions {
            name: Some("c2".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(f.checkpoints.len(), 2);
    assert_eq!(
        f.checkpoint(&c2.id).unwrap().parent.as_deref(),
        Some(c1.id.as_str())
    );
    assert_eq!(
        read(&f.checkpoint(&c1.id).unwrap().disks[0].path, 0, 3),
        b"one"
    );
    assert_eq!(
        read(&f.checkpoint(&c2.id).unwrap().disks[0].path, 0, 3),
        b"two"
    );
    write(&f, 0, 0, b"thr");
    apply(&OsFs, &dir, "c1", &ApplyOptions::default()).unwrap();
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(read(&f.disks[0].path, 0, 3), b"one");
    assert_eq!(f.current.as_deref(), Some(c1.id.as_str()));
    write(&f, 0, 0, b"fou");
    let d = delete(&OsFs, &dir, "c1", &mut |_, _| {}).unwrap();
    eprintln!("{d:?}");
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(f.checkpoints.len(), 1);
    assert_eq!(f.current, None);
    assert_eq!(read(&f.disks[0].path, 0, 3), b"fou");
    assert_eq!(
        read(&f.checkpoint(&c2.id).unwrap().disks[0].path, 0, 3),
        b"two"
    );
    let ex = export(
        &OsFs,
        &dir,
        "c2",
        &t.path().join("out"),
        &ExportOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let g = VmFolder::open(&ex.folder).unwrap();
    assert_eq!(read(&g.disks[0].path, 0, 3), b"two");
    delete_subtree(&OsFs, &dir, "c2", &mut |_, _| {}).unwrap();
    let f = VmFolder::open(&dir).unwrap();
    assert!(f.checkpoints.is_empty());
    assert_eq!(read(&f.disks[0].path, 0, 3), b"fou");
    for e in walkdir(&dir) {
        eprintln!("{}", e.display());
    }
}

fn walkdir(d: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walkdir(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}
