//! The allow-list of the safe pickle reader: the only globals a checkpoint may name, and what calling each one
//! means. Every entry is modelled here in Rust; nothing is imported or executed. A global outside this list
//! stops the read with an error naming it.

use super::pickle::{StorageRef, TensorRef, Value};
use anyhow::{anyhow, bail, Result};
use tch::Kind;

/// The globals the reader understands. Each is modelled, never looked up or called.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    OrderedDict,
    Storage(Kind),
    CodecsEncode,
    NumpyScalar,
    NumpyDtype,
}

/// Map `module.name` to an allowed global, or refuse naming it.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let storage = |k| Ok(Global::Storage(k));
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Ok(Global::RebuildParameterWithState),
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch", "FloatStorage") => storage(Kind::Float),
        ("torch", "HalfStorage") => storage(Kind::Half),
        ("torch", "BFloat16Storage") => storage(Kind::BFloat16),
        ("torch", "DoubleStorage") => storage(Kind::Double),
        ("torch", "LongStorage") => storage(Kind::Int64),
        ("torch", "IntStorage") => storage(Kind::Int),
        ("torch", "ShortStorage") => storage(Kind::Int16),
        ("torch", "CharStorage") => storage(Kind::Int8),
        ("torch", "ByteStorage") => storage(Kind::Uint8),
        ("torch", "BoolStorage") => storage(Kind::Bool),
        // numpy scalars (e.g. a `global_step` saved as numpy.int64) are pickled through these three.
        ("_codecs", "encode") => Ok(Global::CodecsEncode),
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Ok(Global::NumpyScalar),
        ("numpy", "dtype") => Ok(Global::NumpyDtype),
        _ => bail!(
            "refusing to load: the pickle references `{module}.{name}`, which is not a tensor or plain container \
             (a checkpoint that needs it could run arbitrary code; only tensors, dicts, lists and numbers are read)"
        ),
    }
}

pub(crate) fn persistent_load(pid: Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { bail!("refusing to load: persistent id is a {}, not a tuple", pid.type_name()) };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            if *numel < 0 {
                bail!("corrupt checkpoint: storage {key} has negative size");
            }
            Ok(Value::Storage(StorageRef { key: key.clone(), kind: *kind, numel: *numel }))
        }
        _ => {
            let kinds: Vec<&str> = t.iter().map(Value::type_name).collect();
            bail!(
                "refusing to load: unknown persistent id ({}) (expected ('storage', torch.XStorage, key, location, numel))",
                kinds.join(", ")
            )
        }
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(t) | Value::List(t) => t
            .iter()
            .map(|x| x.as_int().ok_or_else(|| anyhow!("corrupt checkpoint: tensor {what} holds a {}", x.type_name())))
            .collect(),
        other => bail!("corrupt checkpoint: tensor {what} is a {}", other.type_name()),
    }
}

pub(crate) fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(g) = callable else {
        bail!("refusing to load: REDUCE calls a {} (only allowed globals may be called)", callable.type_name())
    };
    let Value::Tuple(args) = args else { bail!("corrupt pickle: REDUCE arguments are a {}", args.type_name()) };
    match (g, args.as_slice()) {
        (Global::RebuildTensorV2, [Value::Storage(s), offset, size, stride, ..]) => {
            let offset = offset.as_int().ok_or_else(|| anyhow!("corrupt checkpoint: tensor offset is not an int"))?;
            let size = ints(size, "size")?;
            let stride = ints(stride, "stride")?;
            if size.len() != stride.len() || offset < 0 || size.iter().any(|&d| d < 0) || stride.iter().any(|&d| d < 0)
            {
                bail!(
                    "corrupt checkpoint: tensor in storage {} has size {size:?}, stride {stride:?}, offset {offset}",
                    s.key
                );
            }
            let t = TensorRef { storage: s.clone(), offset, size, stride };
            if t.end().is_none() {
                bail!("corrupt checkpoint: tensor in storage {} has sizes whose product overflows", s.key);
            }
            Ok(Value::Tensor(t))
        }
        (Global::RebuildParameter | Global::RebuildParameterWithState, [t @ Value::Tensor(_), ..]) => Ok(t.clone()),
        (Global::OrderedDict, []) => Ok(Value::Dict(Vec::new())),
        (Global::CodecsEncode, [Value::Str(s), Value::Str(enc)]) if enc == "latin1" || enc == "latin-1" => {
            let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
            Ok(Value::Bytes(bytes.ok_or_else(|| anyhow!("corrupt pickle: latin1 text out of range"))?))
        }
        (Global::NumpyDtype, [Value::Str(code), ..]) => Ok(Value::NumpyDtype(code.clone())),
        (Global::NumpyScalar, [Value::NumpyDtype(code), Value::Bytes(b)]) => numpy_scalar(code, b),
        (g, a) => bail!("refusing to load: {g:?} called with unexpected arguments {a:?}"),
    }
}

fn numpy_scalar(code: &str, b: &[u8]) -> Result<Value> {
    let arr = |n: usize| -> Result<[u8; 8]> {
        if b.len() != n {
            bail!("corrupt pickle: numpy {code} scalar has {} bytes", b.len());
        }
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(b);
        Ok(a)
    };
    Ok(match code {
        "i8" => Value::Int(i64::from_le_bytes(arr(8)?)),
        "i4" => Value::Int(i32::from_le_bytes(arr(4)?[..4].try_into()?) as i64),
        "u4" => Value::Int(u32::from_le_bytes(arr(4)?[..4].try_into()?) as i64),
        "f8" => Value::Float(f64::from_le_bytes(arr(8)?)),
        "f4" => Value::Float(f32::from_le_bytes(arr(4)?[..4].try_into()?) as f64),
        other => bail!("unsupported numpy scalar type `{other}` in checkpoint"),
    })
}
