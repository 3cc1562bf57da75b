//! The tree reader over hostile folders: the input decides, byte by byte,
//! the keys of a VM configuration and of up to six checkpoint
//! configurations (ids from a small pool, so duplicates happen; parents,
//! owners, kinds, times, names, the current checkpoint, the pending
//! operation as JSON that may be garbage, drive paths naming real chain
//! files, missing files or nothing), writes them into a folder beside a
//! real three-file disk chain, and opens it strictly and leniently; the
//! rest of the input is parsed as a 2012 R2 XML configuration. Nothing may
//! panic; every error must be typed, and a strict open that succeeds must
//! agree with the lenient one.

#![no_main]

use checkpoint::config::Config;
use checkpoint::{keys, OpenOptions, OsFs, VmFolder};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vmcx::Value;

const IDS: [&str; 4] = [
    "6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A50",
    "6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A51",
    "6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A52",
    "6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A53",
];
const VM_ID: &str = "0F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A5B";

struct Fixture {
    dir: PathBuf,
    chain: Vec<PathBuf>,
    template: Config,
}

/// A folder with a VM made once per process, its disk a chain of three.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // tmpfs where there is one: every configuration written is synced.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let root = base.join(format!("hvkit-fuzz-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join("vm");
        let mut spec = checkpoint::VmSpec::new("fuzz");
        spec.disks.push(checkpoint::DiskSpec::New { size: 4 << 20 });
        let f = VmFolder::create(&dir, &spec).unwrap();
        let o = checkpoint::CreateOptions::default();
        checkpoint::create(&OsFs, &dir, &o, None).unwrap();
        checkpoint::create(&OsFs, &dir, &o, None).unwrap();
        let g = VmFolder::open(&dir).unwrap();
        let chain = g.disks[0].chain.clone();
        // Only the keys the reader looks at (a full template is ~300 keys,
        // and every iteration writes up to seven configurations).
        let mut template = f.config.clone();
        let keep = |p: &str| {
            p.starts_with("/configuration/properties/")
                || p.starts_with("/configuration/manifest")
                || p.starts_with(&format!("/configuration/_{}_", f.disks[0].slot.instance))
                || p == keys::CHECKPOINT_TYPE
        };
        let drop: Vec<_> = template
            .tree
            .walk()
            .into_iter()
            .filter(|&k| {
                let p = template.tree.path(k);
                template.tree.key(k).value != Value::Node && !keep(&p)
            })
            .collect();
        for k in drop {
            template.tree.detach(k);
        }
        template.remove(keys::HVKIT);
        // The checkpoints made the chain; the fuzzer writes its own.
        for c in &g.checkpoints {
            std::fs::remove_file(&c.config_path).unwrap();
            std::fs::remove_file(&c.runtime_path).unwrap();
        }
        Fixture {
            dir,
            chain,
            template,
        }
    })
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn i64(&mut self) -> i64 {
        let mut v = 0i64;
        for _ in 0..8 {
            v = (v << 8) | i64::from(self.u8());
        }
        v
    }
    fn text(&mut self) -> String {
        let n = (self.u8() % 24) as usize;
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        String::from_utf8_lossy(a).into_owned()
    }
    /// An id from the pool, empty, or text.
    fn id(&mut self) -> String {
        match self.u8() % 7 {
            0..=3 => IDS[(self.u8() % 4) as usize].to_string(),
            4 => String::new(),
            5 => VM_ID.to_string(),
            _ => self.text(),
        }
    }
    fn disk(&mut self, chain: &[PathBuf]) -> String {
        match self.u8() % 6 {
            0..=2 => chain[(self.u8() as usize) % chain.len()].display().to_string(),
            3 => "/nowhere/x.avhdx".into(),
            4 => format!("C:\\Disks\\{}", self.text()),
            _ => self.text(),
        }
    }
}

fn pending(b: &mut Bytes) -> Option<String> {
    let id = b.id();
    Some(match b.u8() % 8 {
        0 | 1 => return None,
        2 => format!(
            "{{\"op\":\"cleanup\",\"command\":\"delete\",\"target\":\"{id}\",\"removed\":[\"{id}\"],\"reparent\":[[\"{}\",null]],\"candidates\":[\"/nowhere\"],\"merges\":[],\"replaced\":[[\"/a\",\"/b\"]],\"remove_files\":[],\"moves\":[[\"/nowhere/a\",\"/nowhere/b\"]]}}",
            b.id()
        ),
        3 => format!(
            "{{\"op\":\"create\",\"checkpoint\":{{\"id\":\"{id}\",\"name\":\"n\",\"created\":{},\"kind\":\"standard\",\"parent\":null}},\"leaves\":[]}}",
            b.i64()
        ),
        4 => format!(
            "{{\"op\":\"apply\",\"target\":\"{id}\",\"leaves\":[],\"save_current\":null,\"runtime\":\"/nowhere\"}}"
        ),
        _ => b.text(),
    })
}

fn write(config: &Config, path: &Path) {
    config.write(&OsFs, path).expect("writing a fuzz configuration");
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let mut b = Bytes(data);
    let snaps = fx.dir.join("Snapshots");
    for e in std::fs::read_dir(&snaps).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    // The VM.
    let mut vm = fx.template.clone();
    let vm_path = vm.path.clone();
    vm.set_string(keys::CURRENT, &b.id());
    if let Some(p) = pending(&mut b) {
        vm.set_string(keys::PENDING, &p);
    }
    if b.u8() % 4 == 0 {
        vm.set(keys::CHECKPOINT_TYPE, Value::Int(i64::from(b.u8())));
    }
    let slot = vm.disk_drives()[0].slot.clone();
    let d = b.disk(&fx.chain);
    vm.set_drive_path(&slot, Path::new(&d));
    write(&vm, &vm_path);
    // The checkpoints.
    let n = b.u8() % 7;
    for _ in 0..n {
        let mut c = fx.template.clone();
        let id = b.id();
        let file = match b.u8() % 4 {
            0 => IDS[(b.u8() % 4) as usize].to_string(),
            _ if checkpoint::layout::is_id(&id) => id.clone(),
            _ => IDS[0].to_string(),
        };
        if b.u8() % 5 != 0 {
            c.set_string(keys::CP_ID, &id);
        }
        c.set_string(keys::CP_VM_ID, if b.u8() % 5 == 0 { IDS[1] } else { VM_ID });
        c.set_string(keys::CP_NAME, &b.text());
        c.set_string(keys::CP_PARENT, &b.id());
        c.set(keys::CP_CREATED, Value::Int(b.i64()));
        match b.u8() % 4 {
            0 => c.set_string(keys::CP_KIND, "production"),
            1 => c.set_string(keys::CP_KIND, &b.text()),
            _ => c.set_string(keys::CP_KIND, "standard"),
        }
        let d = b.disk(&fx.chain);
        c.set_drive_path(&slot, Path::new(&d));
        write(&c, &snaps.join(format!("{file}.vmcx")));
    }
    let strict = VmFolder::open(&fx.dir);
    let lenient = VmFolder::open_with(&fx.dir, OpenOptions { lenient: true });
    if let Ok(s) = &strict {
        let l = lenient.as_ref().expect("a folder that opens strictly opens leniently");
        assert_eq!(s.nodes(), l.nodes());
        assert_eq!(s.current, l.current);
        assert!(l.problems.is_empty());
        // What the model gives out is usable.
        let _ = (s.referenced(), s.all_disk_files());
        for c in &s.checkpoints {
            let _ = s.find(&c.id).expect("finds its own checkpoints");
        }
    }
    // The rest as an XML configuration.
    let _ = checkpoint::xml::parse(Path::new("fuzz.xml"), b.0);
});
