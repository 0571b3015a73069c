//! Reading a CTranslate2 `model.bin`: its variables (name, shape, dtype, raw bytes) and aliases.
//!
//! Layout, little endian, binary versions 4 to 6: `u32` version; the spec name (a string:
//! `u16` length, then bytes with a trailing NUL); `u32` spec revision; `u32` variable count,
//! then per variable its name, `u8` rank, `u32` dims, `u8` dtype, `u32` byte count and the raw
//! data; then `u32` alias count and per alias two strings (alias, target). The variables are
//! borrowed from the input, never copied.

use super::ConvertError;

/// Oldest and newest binary versions understood.
const VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;

/// Element type of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 8-bit integer (also booleans).
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// IEEE half float.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable of the model, borrowing its data.
#[derive(Debug, Clone)]
pub struct Variable<'a> {
    /// Its name, e.g. `encoder/layer_0/self_attention/linear_0/weight`.
    pub name: String,
    /// Its shape, outermost first (a scalar has none).
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: DType,
    /// Its raw little-endian data.
    pub data: &'a [u8],
}

impl Variable<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of an integer (or boolean) scalar.
    pub fn scalar_int(&self) -> Result<i64, ConvertError> {
        let d = self.data;
        let value = match (self.dtype, d.len()) {
            (DType::I8, 1) => i64::from(d[0] as i8),
            (DType::I16, 2) => i64::from(i16::from_le_bytes([d[0], d[1]])),
            (DType::I32, 4) => i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]])),
            _ => return Err(self.bad("is not an integer scalar")),
        };
        Ok(value)
    }

    /// The elements as f32, whatever the float type.
    pub fn to_f32(&self) -> Result<Vec<f32>, ConvertError> {
        let pairs = || {
            self.data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        Ok(match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => pairs().map(|h| half::f16::from_bits(h).to_f32()).collect(),
            DType::Bf16 => pairs().map(|h| half::bf16::from_bits(h).to_f32()).collect(),
            _ => return Err(self.bad("is not a float tensor")),
        })
    }

    /// The elements as IEEE half floats (bit patterns), converting f32 and bf16.
    pub fn to_f16_bits(&self) -> Result<Vec<u16>, ConvertError> {
        if self.dtype == DType::F16 {
            return Ok(self
                .data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        Ok(self
            .to_f32()?
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_bits())
            .collect())
    }

    fn bad(&self, what: &str) -> ConvertError {
        ConvertError::Invalid(format!(
            "variable {} ({:?}, shape {:?}) {what}",
            self.name, self.dtype, self.shape
        ))
    }
}

/// A parsed `model.bin`.
#[derive(Debug, Clone)]
pub struct Ct2Model<'a> {
    /// The binary format version.
    pub version: u32,
    /// The model spec, e.g. `WhisperSpec`.
    pub spec: String,
    /// The spec's revision.
    pub revision: u32,
    variables: Vec<Variable<'a>>,
    aliases: Vec<(String, String)>,
}

/// A little-endian cursor over the input that reports truncation.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConvertError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                ConvertError::Invalid(format!(
                    "model.bin is truncated: {n} bytes wanted at offset {} of {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ConvertError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ConvertError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, ConvertError> {
        let len = usize::from(self.u16()?);
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec())
            .map_err(|_| ConvertError::Invalid("model.bin has a name that is not UTF-8".into()))
    }
}

impl<'a> Ct2Model<'a> {
    /// Parses `bytes`, the whole content of a `model.bin`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ConvertError> {
        let mut c = Cursor { bytes, pos: 0 };
        let version = c.u32()?;
        if !VERSIONS.contains(&version) {
            return Err(ConvertError::Invalid(format!(
                "CTranslate2 binary version {version} is not supported (only {}..={})",
                VERSIONS.start(),
                VERSIONS.end()
            )));
        }
        let spec = c.string()?;
        let revision = c.u32()?;
        let count = c.u32()?;
        let mut variables = Vec::new();
        for _ in 0..count {
            let name = c.string()?;
            let rank = c.u8()?;
            let shape = (0..rank)
                .map(|_| c.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let code = c.u8()?;
            let dtype = DType::from_code(code).ok_or_else(|| {
                ConvertError::Invalid(format!("variable {name} has an unknown dtype {code}"))
            })?;
            let byte_count = c.u32()? as usize;
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(byte_count) {
                return Err(ConvertError::Invalid(format!(
                    "variable {name}: {byte_count} bytes do not fit shape {shape:?} of {dtype:?}"
                )));
            }
            let data = c.take(byte_count)?;
            variables.push(Variable {
                name,
                shape,
                dtype,
                data,
            });
        }
        let mut aliases = Vec::new();
        for _ in 0..c.u32()? {
            let alias = c.string()?;
            let target = c.string()?;
            aliases.push((alias, target));
        }
        Ok(Self {
            version,
            spec,
            revision,
            variables,
            aliases,
        })
    }

    /// Every variable, in file order.
    pub fn variables(&self) -> &[Variable<'a>] {
        &self.variables
    }

    /// The variable named `name`, following an alias.
    pub fn get(&self, name: &str) -> Option<&Variable<'a>> {
        let name = self
            .aliases
            .iter()
            .find(|(alias, _)| alias == name)
            .map_or(name, |(_, target)| target.as_str());
        self.variables.iter().find(|v| v.name == name)
    }

    /// The variable named `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&Variable<'a>, ConvertError> {
        self.get(name)
            .ok_or_else(|| ConvertError::Invalid(format!("model.bin has no variable {name}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `model.bin` (version 6) from variables `(name, shape, dtype code, data)`.
    pub(crate) fn model_bin(spec: &str, vars: &[(&str, &[usize], u8, Vec<u8>)]) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, spec);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, shape, dtype, data) in vars {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for d in *shape {
                out.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            out.push(*dtype);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&1u32.to_le_bytes());
        string(&mut out, "alias/weight");
        string(&mut out, vars[0].0);
        out
    }

    #[test]
    fn parses_variables_scalars_and_aliases() {
        let halves: Vec<u8> = [1.0f32, -2.5, 0.5]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
            .collect();
        let bin = model_bin(
            "WhisperSpec",
            &[
                ("w", &[3], 4, halves),
                ("heads", &[], 2, 6i16.to_le_bytes().to_vec()),
                (
                    "f",
                    &[1, 2],
                    0,
                    [1.5f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            ],
        );
        let model = Ct2Model::parse(&bin).unwrap();
        assert_eq!(
            (model.version, model.spec.as_str(), model.revision),
            (6, "WhisperSpec", 3)
        );
        assert_eq!(model.variables().len(), 3);
        assert_eq!(
            model.require("w").unwrap().to_f32().unwrap(),
            [1.0, -2.5, 0.5]
        );
        assert_eq!(model.require("alias/weight").unwrap().name, "w");
        assert_eq!(model.require("heads").unwrap().scalar_int().unwrap(), 6);
        let f = model.require("f").unwrap();
        assert_eq!(f.shape, [1, 2]);
        assert_eq!(
            f.to_f16_bits().unwrap()[0],
            half::f16::from_f32(1.5).to_bits()
        );
        assert!(
            model
                .require("nope")
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }

    #[test]
    fn truncation_and_bad_headers_are_errors() {
        let bin = model_bin("WhisperSpec", &[("w", &[2], 0, vec![0; 8])]);
        let err = Ct2Model::parse(&bin[..bin.len() - 20]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut old = bin.clone();
        old[0] = 1;
        assert!(
            Ct2Model::parse(&old)
                .unwrap_err()
                .to_string()
                .contains("version 1")
        );
        let mut wrong = model_bin("WhisperSpec", &[("w", &[3], 0, vec![0; 8])]);
        wrong.truncate(wrong.len());
        assert!(
            Ct2Model::parse(&wrong)
                .unwrap_err()
                .to_string()
                .contains("do not fit")
        );
        assert!(Ct2Model::parse(b"").is_err());
    }
}
