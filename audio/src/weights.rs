//! Loading the diarisation models' PyTorch state dicts, and the error their engines share.
//!
//! Both diarisation models ship as PyTorch zip pickles, which candle reads directly
//! ([`candle_core::pickle`]); [`StateDict`] looks tensors up by name and checks their shapes,
//! so that a wrong or truncated file fails at load time with the tensor's name rather than
//! with a shape error deep inside a forward pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Why a diarisation model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weights file cannot be read as a PyTorch pickle.
    #[error("cannot read the {model} weights {}: {source}", path.display())]
    Read {
        /// Which model was being loaded.
        model: &'static str,
        /// The file.
        path: PathBuf,
        /// candle's error.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// The state dict lacks a tensor the architecture needs.
    #[error("{model}: the weights have no tensor `{name}`")]
    MissingTensor {
        /// Which model was being loaded.
        model: &'static str,
        /// The tensor's state-dict name.
        name: String,
    },
    /// A tensor has another shape than the architecture's.
    #[error("{model}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// Which model was being loaded.
        model: &'static str,
        /// The tensor's state-dict name.
        name: String,
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// The input cannot be processed (too short, wrong shape).
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for ModelError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(Box::new(error))
    }
}

/// The tensors of one model, by state-dict name, on the CPU.
pub(crate) struct StateDict {
    model: &'static str,
    tensors: HashMap<String, Tensor>,
}

impl StateDict {
    /// Reads a PyTorch zip pickle; `key` selects a nested dict (Lightning's `state_dict`).
    pub(crate) fn read(
        model: &'static str,
        path: &Path,
        key: Option<&str>,
    ) -> Result<Self, ModelError> {
        let tensors = candle_core::pickle::read_all_with_key(path, key).map_err(|source| {
            ModelError::Read {
                model,
                path: path.to_owned(),
                source: Box::new(source),
            }
        })?;
        Ok(Self::new(model, tensors.into_iter().collect()))
    }

    /// Wraps tensors already in memory.
    pub(crate) fn new(model: &'static str, tensors: HashMap<String, Tensor>) -> Self {
        Self { model, tensors }
    }

    /// The tensor `name` as f32 on the CPU, checked to have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                model: self.model,
                name: name.to_owned(),
            })?;
        if tensor.dims() != shape {
            return Err(ModelError::TensorShape {
                model: self.model,
                name: name.to_owned(),
                expected: shape.to_vec(),
                actual: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// The tensor `name` flattened into a vector, checked to have `shape`.
    pub(crate) fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        Ok(self.get(name, shape)?.flatten_all()?.to_vec1()?)
    }
}
