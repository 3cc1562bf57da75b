//! Opening the image a command names: a VHDX chain or a raw file.

use crate::CliError;
use std::io::Read;
use std::path::{Path, PathBuf};
use vhdx::{ChainOptions, Disk, GuestImage, RawImage};

/// Options shared by commands that open a chain.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ChainArgs {
    /// Parent file of a differencing disk (repeat for grandparents, nearest first);
    /// otherwise the parent locator is used
    #[arg(long = "parent", value_name = "PATH")]
    pub parents: Vec<PathBuf>,
    /// Read through a parent whose DataWriteGuid does not match the child's parent_linkage
    #[arg(long)]
    pub force: bool,
}

impl ChainArgs {
    pub fn options(&self) -> ChainOptions {
        ChainOptions {
            parents: self.parents.clone(),
            force: self.force,
            ..ChainOptions::default()
        }
    }

    pub fn open(&self, path: &Path) -> Result<Disk, CliError> {
        Ok(Disk::open(path, &self.options())?)
    }
}

/// True when the file starts with the VHDX signature.
pub fn is_vhdx(path: &Path) -> Result<bool, CliError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display()), 1))?;
    let mut sig = [0u8; 8];
    let n = f
        .read(&mut sig)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display()), 1))?;
    Ok(n == 8 && &sig == vhdx::format::file_id::SIGNATURE)
}

/// Opens a VHDX chain, or a raw file when `raw` is set or the file does not
/// start with the VHDX signature.
pub fn open_any(
    path: &Path,
    raw: bool,
    chain: &ChainArgs,
) -> Result<Box<dyn GuestImage>, CliError> {
    if !raw && is_vhdx(path)? {
        Ok(Box::new(chain.open(path)?))
    } else {
        Ok(Box::new(RawImage::open(path)?))
    }
}
