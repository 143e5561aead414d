//! Enums with one lower-case name per variant: the spelling configs, the
//! command line and messages use. The wire (postcard) carries the variant
//! index instead, and `--json` output the Rust variant name, so these names
//! can be given without touching either.

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
