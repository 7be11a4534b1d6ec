//! Editing a safetensors file in place, for tests that hand a loader a damaged checkpoint or adapter
//! (a tensor renamed, dropped, reshaped or overwritten with NaN).
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// One tensor of a file: name, dtype, shape and raw little-endian bytes.
pub type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Reads every tensor of `path`, lets `edit` change the list, and writes it back (no metadata).
pub fn edit_safetensors(path: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut entries);
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("a valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path)
        .expect("writing the edited file");
}
