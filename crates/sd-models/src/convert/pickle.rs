//! A pickle reader that never executes code: the data.pkl of a `torch.save` zip is interpreted by a small virtual
//! machine that knows only the opcodes torch emits for state dicts and only an allow-list of globals, each of
//! which is *modelled* here (nothing is imported or called). Anything else — `os.system`, `builtins.eval`,
//! `subprocess.Popen`, a REDUCE whose callable is not an allowed global — stops the read with an error naming it.
//!
//! Opcode reference: CPython `Lib/pickletools.py`; tensor layout: torch `_utils._rebuild_tensor_v2`
//! (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]).

pub use super::allow::Global;
use super::allow::{persistent_load, reduce, resolve_global};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use tch::Kind;

/// A storage referenced by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub kind: Kind,
    pub numel: i64,
}

/// A tensor view into a storage (element offsets, not bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A Python value as far as a state dict needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// `numpy.dtype(...)`: only its type string is kept (e.g. `i8`, `f8`).
    NumpyDtype(String),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::NumpyDtype(_) => "numpy dtype",
        }
    }
}

const MAX_DEPTH_ITEMS: usize = 50_000_000;

/// Interpret a pickle stream and return the value it builds.
pub fn load(data: &[u8]) -> Result<Value> {
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), cloned: 0 }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Elements copied out of the memo so far (bounds a "billion laughs" pickle).
    cloned: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            anyhow!("pickle data ends unexpectedly at byte {} (truncated or corrupt checkpoint)", self.pos)
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("pickle GLOBAL without newline"))?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| anyhow!("pickle GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("corrupt pickle: pop across a MARK at byte {}", self.pos);
        }
        self.stack.pop().ok_or_else(|| anyhow!("corrupt pickle: stack underflow at byte {}", self.pos))
    }
    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| anyhow!("corrupt pickle: empty stack at byte {}", self.pos))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("corrupt pickle: no MARK at byte {}", self.pos))?;
        if m > self.stack.len() {
            bail!("corrupt pickle: MARK beyond stack");
        }
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8(b.to_vec()).map_err(|_| anyhow!("pickle string is not UTF-8"))?))
    }
    fn memo_get(&mut self, idx: u32) -> Result<Value> {
        let v = self.memo.get(&idx).cloned().ok_or_else(|| anyhow!("corrupt pickle: memo {idx} not set"))?;
        self.cloned += count(&v);
        if self.cloned > MAX_DEPTH_ITEMS {
            bail!("refusing to load: the pickle duplicates containers excessively (memory bomb?)");
        }
        Ok(v)
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.stack.last().cloned().ok_or_else(|| anyhow!("corrupt pickle: PUT on empty stack"))?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("unsupported pickle protocol {proto}");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        bail!("pickle integer of {n} bytes is too large for a checkpoint value");
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.stack.push(Value::Float(v));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b, c]));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = pairs(items)?;
                    self.stack.push(Value::Dict(dict));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        other => bail!("corrupt pickle: APPEND to a {}", other.type_name()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => bail!("corrupt pickle: APPENDS to a {}", other.type_name()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        other => bail!("corrupt pickle: SETITEM on a {}", other.type_name()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        other => bail!("corrupt pickle: SETITEMS on a {}", other.type_name()),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (module.as_str(), name.as_str()) else {
                        bail!("corrupt pickle: STACK_GLOBAL with non-string names");
                    };
                    let g = resolve_global(m, n)?;
                    self.stack.push(Value::Global(g));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ cls.__new__(cls, *args): only OrderedDict is a class we model.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: set state on the object below. Dict attributes (`_metadata`) and numpy dtype
                    // state carry nothing a state dict needs, so the state is checked for type and dropped.
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::NumpyDtype(_) | Value::Tensor(_) => {}
                        other => {
                            bail!("refusing to load: BUILD on a {} (only dicts are given state)", other.type_name())
                        }
                    }
                    drop(state);
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET: kept as a list
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => bail!("corrupt pickle: ADDITEMS on a {}", other.type_name()),
                    }
                }
                other => bail!(
                    "refusing to load: pickle opcode 0x{other:02x} at byte {} is not one torch uses for state dicts",
                    self.pos - 1
                ),
            }
        }
    }
}

fn count(v: &Value) -> usize {
    match v {
        Value::Tuple(x) | Value::List(x) => 1 + x.iter().map(count).sum::<usize>(),
        Value::Dict(d) => 1 + d.iter().map(|(k, v)| count(k) + count(v)).sum::<usize>(),
        _ => 1,
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if items.len() & 1 == 1 {
        bail!("corrupt pickle: odd number of dict items");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}
