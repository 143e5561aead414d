//! Enums with one lower-case name per variant: the spelling configs, the
//! command line, messages and `sshmctl --json` use. The wire (postcard)
//! carries the variant index instead, so these names can be given without
//! touching it (sshmctl rewrites serde's Rust variant names in its JSON).
#![forbid(unsafe_code)]

/// A closed set of values, each with one name.
pub trait Named: Copy + Sized + 'static {
    /// Every value, in wire order.
    const ALL: &'static [Self];
    /// `NAMES[i]` is the name of `ALL[i]` (a unit test checks it).
    const NAMES: &'static [&'static str];

    fn name(self) -> &'static str;

    /// The value called `name`, exactly as written (no case folding).
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|value| value.name() == name)
    }
}
