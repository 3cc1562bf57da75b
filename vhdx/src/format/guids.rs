//! Well-known GUIDs (MS-VHDX 2.2.3.1, 2.6.1.2, 2.6.2.6).

use uuid::{uuid, Uuid};

/// BAT region (2.2.3.1).
pub const BAT_REGION: Uuid = uuid!("2DC27766-F623-4200-9D64-115E9BFD4A08");
/// Metadata region (2.2.3.1).
pub const METADATA_REGION: Uuid = uuid!("8B7CA206-4790-4B9A-B8FE-575F050F886E");
/// File parameters item (2.6.2.1).
pub const FILE_PARAMETERS: Uuid = uuid!("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
/// Virtual disk size item (2.6.2.2).
pub const VIRTUAL_DISK_SIZE: Uuid = uuid!("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
/// Virtual disk id / page 83 data item (2.6.2.3).
pub const VIRTUAL_DISK_ID: Uuid = uuid!("BECA12AB-B2E6-4523-93EF-C309E000C746");
/// Logical sector size item (2.6.2.4).
pub const LOGICAL_SECTOR_SIZE: Uuid = uuid!("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
/// Physical sector size item (2.6.2.5).
pub const PHYSICAL_SECTOR_SIZE: Uuid = uuid!("CDA348C7-445D-4471-9CC9-E9885251C556");
/// Parent locator item (2.6.2.6).
pub const PARENT_LOCATOR: Uuid = uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
/// The VHDX parent locator type (2.6.2.6.1).
pub const LOCATOR_TYPE_VHDX: Uuid = uuid!("B04AEFB7-D19E-4A81-B789-25B8E9445913");

/// Returns the name of a known metadata item.
pub fn metadata_item_name(id: &Uuid) -> Option<&'static str> {
    Some(match *id {
        FILE_PARAMETERS => "file_parameters",
        VIRTUAL_DISK_SIZE => "virtual_disk_size",
        VIRTUAL_DISK_ID => "virtual_disk_id",
        LOGICAL_SECTOR_SIZE => "logical_sector_size",
        PHYSICAL_SECTOR_SIZE => "physical_sector_size",
        PARENT_LOCATOR => "parent_locator",
        _ => return None,
    })
}
