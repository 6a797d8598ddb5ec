//! The weights of a checkpoint folder: one `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`.

use super::config::parse_object;
use crate::error::{Error, Result};
use crate::safetensors::{json_kind, SafetensorsFile};
use crate::source::TensorSource;
use crate::tensor::Tensor;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// Name of the single-file weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// All tensors of a checkpoint, possibly spread over several files.
#[derive(Debug)]
pub struct HfWeights {
    /// `model.safetensors` or the index: named in "no such tensor" errors.
    origin: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    location: HashMap<String, usize>,
}

impl HfWeights {
    /// Combines open files, refusing a tensor that appears in two of them
    /// (which copy would be meant is unknowable). `origin` (the single file or
    /// the index) is named in errors about unknown tensors.
    pub fn from_files(origin: &Path, files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut location = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for t in file.tensors() {
                if let Some(&first) = location.get(&t.name) {
                    let first: &SafetensorsFile = &files[first];
                    return Err(Error::format(
                        file.path(),
                        format!(
                            "tensor '{}' is also in {}: a tensor may appear only once",
                            t.name,
                            first.path().display()
                        ),
                    ));
                }
                location.insert(t.name.clone(), i);
            }
        }
        Ok(HfWeights {
            origin: origin.to_path_buf(),
            files,
            location,
        })
    }

    /// The single file or the shard index these weights were opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The open files, in the order they were opened (shards sorted by name).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.location.get(name).map(|&i| &self.files[i])
    }
}

impl TensorSource for HfWeights {
    /// Sorted, so that listings are reproducible whatever the file order.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.location.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        Some(self.file_of(name)?.get(name)?.shape.clone())
    }

    fn load_f32(&self, name: &str) -> Result<Tensor> {
        match self.file_of(name) {
            Some(file) => file.load_f32(name),
            None => Err(Error::format(
                &self.origin,
                format!("no tensor named '{name}'"),
            )),
        }
    }
}

/// Opens the weights of the checkpoint folder `dir`: `model.safetensors` if
/// present (as transformers prefers it), else the shards named by
/// `model.safetensors.index.json`.
pub fn open_weights(dir: &Path) -> Result<HfWeights> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return HfWeights::from_files(&single, vec![SafetensorsFile::open(&single)?]);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return open_sharded(dir, &index);
    }
    let hint = if dir.join("pytorch_model.bin").exists()
        || dir.join("pytorch_model.bin.index.json").exists()
    {
        " (only PyTorch .bin weights found: convert them to safetensors)"
    } else {
        ""
    };
    Err(Error::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no such file, and no {INDEX_FILE} either{hint}"),
        ),
    ))
}

/// Opens every shard of a sharded checkpoint and checks that each tensor the
/// index lists is in the shard it names.
fn open_sharded(dir: &Path, index: &Path) -> Result<HfWeights> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let obj = parse_object(&text, index)?;
    let map = match obj.get("weight_map") {
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(Error::format(
                index,
                format!("'weight_map' must be an object, got {}", json_kind(v)),
            ))
        }
        None => return Err(Error::format(index, "missing key 'weight_map'")),
    };
    // Tensor name → shard file name. Repeated keys were already refused by
    // the strict JSON parser ("listed twice").
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::format(index, format!("weight_map['{name}'] must be a file name"))
        })?;
        // Shards must sit in the folder: an index is not allowed to make us
        // open arbitrary paths.
        let mut parts = Path::new(file).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(Error::format(
                index,
                format!("weight_map['{name}'] = '{file}' is not a plain file name in the folder"),
            ));
        }
        wanted.insert(name, file);
    }
    if wanted.is_empty() {
        return Err(Error::format(index, "'weight_map' lists no tensors"));
    }

    let mut shard_names: Vec<&str> = wanted.values().copied().collect();
    shard_names.sort_unstable();
    shard_names.dedup();
    let mut files = Vec::with_capacity(shard_names.len());
    for shard in &shard_names {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(Error::format(
                index,
                format!("names shard '{shard}', which is missing from the folder"),
            ));
        }
        files.push(SafetensorsFile::open(&path)?);
    }
    let weights = HfWeights::from_files(index, files)?;
    for (name, shard) in &wanted {
        let found = weights.file_of(name).map(|f| f.path());
        if found != Some(dir.join(shard).as_path()) {
            return Err(Error::format(
                index,
                format!("lists tensor '{name}' in '{shard}', but that shard does not contain it"),
            ));
        }
    }
    Ok(weights)
}
