//! The denoising networks. Each family's network is a folder (`unet/` for
//! SD 1.x/2.x/XL); an MMDiT for a transformer family would be a sibling.
#![forbid(unsafe_code)]

pub mod unet;
