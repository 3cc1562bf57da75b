//! Re-pointing a differencing disk (MS-VHDX 2.6.2.6): replacing its parent
//! locator item, journaled like every other metadata change.
//!
//! The new item goes where the old one was when it fits, otherwise into the
//! first free space of the metadata region's item area past every item;
//! the table entry and the item bytes change in one commit of their own, so
//! a crash leaves the old locator or the new one.

use crate::error::{Error, Result};
use crate::format::guids;
use crate::format::locator::ParentLocator;
use crate::format::metadata::{self as md, MAX_ITEM_LENGTH};
use crate::image::VhdxFile;

impl VhdxFile {
    /// Replaces the parent locator of this differencing disk with `loc`
    /// (which must carry a `parent_linkage`). The guest-visible content does
    /// not change, so the DataWriteGuid stays; the change is durable when
    /// this returns.
    pub fn set_parent_locator(&mut self, loc: &ParentLocator) -> Result<()> {
        if !self.has_parent() {
            return Err(Error::unsupported(
                &self.path,
                "only a differencing disk has a parent locator",
            ));
        }
        if loc.locator_type != guids::LOCATOR_TYPE_VHDX || loc.get("parent_linkage").is_none() {
            return Err(Error::unsupported(
                &self.path,
                "a parent locator needs the VHDX locator type and a parent_linkage",
            ));
        }
        let value = loc.to_bytes();
        if value.len() as u64 > MAX_ITEM_LENGTH as u64 {
            return Err(Error::unsupported(
                &self.path,
                "the parent locator would exceed 1 MiB",
            ));
        }
        // Earlier changes go in their own entries; this one is atomic.
        self.commit()?;
        self.begin_change(false)?;
        let region = self.metadata_region.clone();
        let mut entries = self.metadata.entries.clone();
        let i = entries
            .iter()
            .position(|e| !e.is_user && e.item_id == guids::PARENT_LOCATOR)
            .ok_or_else(|| Error::unsupported(&self.path, "the file has no parent locator item"))?;
        let len = value.len() as u64;
        let offset = if len <= entries[i].length as u64 {
            entries[i].offset as u64
        } else {
            let used_end = entries
                .iter()
                .filter(|e| e.length > 0)
                .map(|e| e.offset as u64 + e.length as u64)
                .max()
                .unwrap_or(0)
                .max(md::TABLE_SIZE as u64);
            let at = used_end.next_multiple_of(8);
            if at + len > region.length as u64 {
                return Err(Error::unsupported(
                    &self.path,
                    format!(
                        "no room for a {len}-byte parent locator in the {:#x}-byte metadata region",
                        region.length
                    ),
                ));
            }
            at
        };
        entries[i].offset = offset as u32;
        entries[i].length = len as u32;
        self.stage_bytes(region.file_offset, &md::table_to_bytes(&entries))?;
        self.stage_bytes(region.file_offset + offset, &value)?;
        self.metadata.entries = entries;
        self.metadata.parent_locator = Some(loc.clone());
        self.commit()
    }

    /// Replaces the virtual disk id (page 83 data, 2.6.2.5), as a merge does
    /// when the merged child carries another id than its parent. Journaled;
    /// durable at the next commit.
    pub fn set_virtual_disk_id(&mut self, id: uuid::Uuid) -> Result<()> {
        if self.metadata.virtual_disk_id == id {
            return Ok(());
        }
        self.begin_change(false)?;
        let mut b = [0u8; 16];
        crate::format::put_guid(&mut b, 0, &id);
        self.put_metadata_item(&guids::VIRTUAL_DISK_ID, &b)?;
        self.metadata.virtual_disk_id = id;
        Ok(())
    }
}
