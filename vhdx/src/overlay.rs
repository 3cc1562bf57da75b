//! An in-memory overlay of file bytes: the result of replaying a log without
//! touching the file (read-only opens, MS-VHDX 2.3.3 footnote 5).

use std::collections::BTreeMap;

/// What an overlay extent reads as.
#[derive(Debug, Clone)]
enum Content {
    Zero,
    /// Exactly 4 KiB.
    Page(Box<[u8]>),
}

#[derive(Debug, Clone)]
struct Extent {
    end: u64,
    content: Content,
}

/// Disjoint byte extents that replace the file's bytes. Data extents are
/// single 4 KiB pages at 4 KiB-aligned offsets; zero extents are any
/// 4 KiB-aligned range.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    extents: BTreeMap<u64, Extent>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// End of the last extent.
    pub fn end(&self) -> u64 {
        self.extents.values().next_back().map_or(0, |e| e.end)
    }

    /// Records a 4 KiB page write at `start` (later writes win).
    pub fn put_page(&mut self, start: u64, page: Box<[u8]>) {
        debug_assert_eq!(page.len(), 4096);
        self.insert(start, start + 4096, Content::Page(page));
    }

    /// Records a zero write over `start..end`.
    pub fn put_zero(&mut self, start: u64, end: u64) {
        self.insert(start, end, Content::Zero);
    }

    fn insert(&mut self, start: u64, end: u64, content: Content) {
        let overlapping: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(_, e)| e.end > start)
            .map(|(&k, _)| k)
            .collect();
        for k in overlapping {
            let old = self.extents.remove(&k).expect("key just listed");
            // Pages are aligned and whole, so only zero extents are ever cut.
            if k < start {
                self.extents.insert(
                    k,
                    Extent {
                        end: start,
                        content: old.content.clone(),
                    },
                );
            }
            if old.end > end {
                self.extents.insert(
                    end,
                    Extent {
                        end: old.end,
                        content: old.content,
                    },
                );
            }
        }
        self.extents.insert(start, Extent { end, content });
    }

    /// Patches `buf`, which holds the file's bytes at `offset`, with every
    /// overlapping extent.
    pub fn patch(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .filter(|(_, e)| e.end > offset)
            .map(|(&k, _)| k)
            .unwrap_or(offset);
        for (&k, e) in self.extents.range(first..end) {
            let s = k.max(offset);
            let t = e.end.min(end);
            if s >= t {
                continue;
            }
            let dst = &mut buf[(s - offset) as usize..(t - offset) as usize];
            match &e.content {
                Content::Zero => dst.fill(0),
                Content::Page(p) => dst.copy_from_slice(&p[(s - k) as usize..(t - k) as usize]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_writes_win_and_zero_ranges_split() {
        let mut o = Overlay::default();
        o.put_zero(0, 16384);
        o.put_page(4096, vec![7u8; 4096].into_boxed_slice());
        let mut buf = vec![1u8; 20000];
        o.patch(&mut buf, 0);
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..8192].iter().all(|&b| b == 7));
        assert!(buf[8192..16384].iter().all(|&b| b == 0));
        assert!(buf[16384..].iter().all(|&b| b == 1));
        o.put_zero(4096, 8192);
        let mut buf = vec![1u8; 100];
        o.patch(&mut buf, 4090);
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(o.end(), 16384);
    }

    #[test]
    fn patch_starts_inside_an_extent() {
        let mut o = Overlay::default();
        let page: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        o.put_page(8192, page.into_boxed_slice());
        let mut buf = vec![0xffu8; 10];
        o.patch(&mut buf, 8192 + 100);
        assert_eq!(buf, (100..110u32).map(|i| i as u8).collect::<Vec<_>>());
    }
}
