//! Feature `fuzz`: the input mutations every decoder's fuzz harness shares (the proptest
//! harnesses in each crate's `tests/fuzz_*.rs`): a real input with a few of its items
//! overwritten and perhaps cut short.
//!
//! ```
//! use proptest::prelude::*;
//! use proptest::strategy::ValueTree;
//! use proptest::test_runner::TestRunner;
//!
//! let strategy = stepq_core::fuzz::edited_bytes(b"{\"task_id\": \"t1\"}".to_vec());
//! let input = strategy.new_tree(&mut TestRunner::default()).unwrap().current();
//! assert!(input.len() <= 17);
//! ```

use proptest::prelude::*;

/// Most items one mutation overwrites.
const MAX_EDITS: usize = 8;

/// `sample` with up to eight items overwritten by ones from `item`, then maybe cut short.
pub fn edited<T, S>(sample: Vec<T>, item: S) -> impl Strategy<Value = Vec<T>>
where
    T: Clone + std::fmt::Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    (
        prop::collection::vec((any::<usize>(), item), 0..MAX_EDITS),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(move |(edits, cut)| {
            let mut items = sample.clone();
            if items.is_empty() {
                return items;
            }
            let len = items.len();
            for (at, value) in edits {
                items[at % len] = value;
            }
            if let Some(cut) = cut {
                items.truncate(cut % len);
            }
            items
        })
}

/// `sample` with bytes overwritten and maybe cut short (see [`edited`]).
pub fn edited_bytes(sample: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    edited(sample, any::<u8>())
}

/// Text `sample` with characters overwritten by printable ASCII or newlines, and maybe cut
/// short (see [`edited`]).
pub fn edited_text(sample: &str) -> impl Strategy<Value = String> {
    let printable = prop_oneof![proptest::char::range(' ', '~'), Just('\n')];
    edited(sample.chars().collect(), printable).prop_map(|chars| chars.into_iter().collect())
}
