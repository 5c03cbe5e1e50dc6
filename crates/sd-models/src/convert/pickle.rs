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
use sd_core::limits;
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

impl TensorRef {
    /// Elements in the view, `None` when the sizes overflow.
    pub fn numel(&self) -> Option<i64> {
        self.size.iter().try_fold(1i64, |a, &d| a.checked_mul(d))
    }

    /// One past the last storage element the view touches (its offset when empty), `None` on overflow.
    pub fn end(&self) -> Option<i64> {
        if self.numel()? == 0 {
            return Some(self.offset);
        }
        self.size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset.checked_add(1)?, |a, (&s, &st)| a.checked_add(s.checked_sub(1)?.checked_mul(st)?))
    }
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

/// Interpret a pickle stream and return the value it builds.
///
/// The machine is a loop over opcodes (no recursion on input structure), and every container records its nesting
/// depth as it is built, so a pickle nested past [`limits::PICKLE_MAX_DEPTH`] is refused before any recursive consumer
/// (drop, clone, the state-dict walk) could overflow the stack. The stack, the memo and the values built (memo
/// copies included) are bounded by the other `PICKLE_*` limits of [`sd_core::limits`].
pub fn load(data: &[u8]) -> Result<Value> {
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), values: 0 }.run()
}

/// A value on the machine's stack with its nesting depth (0 for scalars, 1 for a container of scalars).
type Item = (Value, usize);

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    /// Values built so far, copies out of the memo included (bounds a "billion laughs" pickle).
    values: usize,
}

fn limit_error(what: &str, name: &str, limit: usize, unit: &str) -> anyhow::Error {
    anyhow!("refusing to load: {}", limits::exceeded(what, name, limit as u64, unit))
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
    /// Count `n` more values against [`limits::PICKLE_MAX_VALUES`].
    fn spend(&mut self, n: usize) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > limits::PICKLE_MAX_VALUES {
            return Err(limit_error("the pickle's values", "pickle values", limits::PICKLE_MAX_VALUES, "values"));
        }
        Ok(())
    }
    fn check_depth(&self, depth: usize) -> Result<()> {
        if depth > limits::PICKLE_MAX_DEPTH {
            return Err(anyhow!(
                "refusing to load: {} (at byte {})",
                limits::exceeded("container nesting", "pickle depth", limits::PICKLE_MAX_DEPTH as u64, "levels"),
                self.pos
            ));
        }
        Ok(())
    }
    /// Push a scalar.
    fn push(&mut self, v: Value) -> Result<()> {
        self.push_item((v, 0))
    }
    /// Push a container built from items whose deepest has depth `inner`.
    fn push_container(&mut self, v: Value, inner: usize) -> Result<()> {
        self.push_item((v, inner + 1))
    }
    fn push_item(&mut self, item: Item) -> Result<()> {
        self.check_depth(item.1)?;
        if self.stack.len() >= limits::PICKLE_MAX_STACK {
            return Err(limit_error("the pickle's stack", "pickle stack", limits::PICKLE_MAX_STACK, "values"));
        }
        self.spend(1)?;
        self.stack.push(item);
        Ok(())
    }
    fn pop(&mut self) -> Result<Item> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("corrupt pickle: pop across a MARK at byte {}", self.pos);
        }
        self.stack.pop().ok_or_else(|| anyhow!("corrupt pickle: stack underflow at byte {}", self.pos))
    }
    /// The top of the stack, which is about to receive items of depth up to `inner`.
    fn top_receiving(&mut self, inner: usize) -> Result<&mut Value> {
        let pos = self.pos;
        self.check_depth(inner + 1)?;
        let (v, d) = self.stack.last_mut().ok_or_else(|| anyhow!("corrupt pickle: empty stack at byte {pos}"))?;
        *d = (*d).max(inner + 1);
        Ok(v)
    }
    fn pop_mark(&mut self) -> Result<(Vec<Value>, usize)> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("corrupt pickle: no MARK at byte {}", self.pos))?;
        if m > self.stack.len() {
            bail!("corrupt pickle: MARK beyond stack");
        }
        let items = self.stack.split_off(m);
        let depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        Ok((items.into_iter().map(|(v, _)| v).collect(), depth))
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8(b.to_vec()).map_err(|_| anyhow!("pickle string is not UTF-8"))?))
    }
    fn memo_get(&mut self, idx: u32) -> Result<Item> {
        let item = self.memo.get(&idx).ok_or_else(|| anyhow!("corrupt pickle: memo {idx} not set"))?;
        let n = count(&item.0);
        self.spend(n)?;
        Ok(self.memo.get(&idx).cloned().unwrap_or((Value::None, 0)))
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        if self.memo.len() >= limits::PICKLE_MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(limit_error("the pickle's memo", "pickle memo", limits::PICKLE_MAX_MEMO, "entries"));
        }
        let n =
            self.stack.last().map(|(v, _)| count(v)).ok_or_else(|| anyhow!("corrupt pickle: PUT on empty stack"))?;
        self.spend(n)?;
        let item = self.stack.last().cloned().ok_or_else(|| anyhow!("corrupt pickle: PUT on empty stack"))?;
        self.memo.insert(idx, item);
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
                b'.' => return self.pop().map(|(v, _)| v),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push_container(Value::Dict(Vec::new()), 0)?,
                b']' => self.push_container(Value::List(Vec::new()), 0)?,
                b')' => self.push_container(Value::Tuple(Vec::new()), 0)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        bail!("pickle integer of {n} bytes is too large for a checkpoint value");
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.push(Value::Float(v))?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
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
                    let item = self.memo_get(i)?;
                    self.push_item(item)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    let item = self.memo_get(i)?;
                    self.push_item(item)?;
                }
                b't' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_container(Value::Tuple(items), d)?;
                }
                0x85 => {
                    let (a, da) = self.pop()?;
                    self.push_container(Value::Tuple(vec![a]), da)?;
                }
                0x86 => {
                    let (b, db) = self.pop()?;
                    let (a, da) = self.pop()?;
                    self.push_container(Value::Tuple(vec![a, b]), da.max(db))?;
                }
                0x87 => {
                    let (c, dc) = self.pop()?;
                    let (b, db) = self.pop()?;
                    let (a, da) = self.pop()?;
                    self.push_container(Value::Tuple(vec![a, b, c]), da.max(db).max(dc))?;
                }
                b'l' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_container(Value::List(items), d)?;
                }
                b'd' => {
                    let (items, d) = self.pop_mark()?;
                    let dict = pairs(items)?;
                    self.push_container(Value::Dict(dict), d)?;
                }
                b'a' => {
                    let (v, d) = self.pop()?;
                    match self.top_receiving(d)? {
                        Value::List(l) => l.push(v),
                        other => bail!("corrupt pickle: APPEND to a {}", other.type_name()),
                    }
                }
                b'e' => {
                    let (items, d) = self.pop_mark()?;
                    match self.top_receiving(d)? {
                        Value::List(l) => l.extend(items),
                        other => bail!("corrupt pickle: APPENDS to a {}", other.type_name()),
                    }
                }
                b's' => {
                    let (v, dv) = self.pop()?;
                    let (k, dk) = self.pop()?;
                    match self.top_receiving(dv.max(dk))? {
                        Value::Dict(d) => d.push((k, v)),
                        other => bail!("corrupt pickle: SETITEM on a {}", other.type_name()),
                    }
                }
                b'u' => {
                    let (items, d) = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top_receiving(d)? {
                        Value::Dict(d) => d.extend(new),
                        other => bail!("corrupt pickle: SETITEMS on a {}", other.type_name()),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(&module, &name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Some(m), Some(n)) = (module.as_str(), name.as_str()) else {
                        bail!("corrupt pickle: STACK_GLOBAL with non-string names");
                    };
                    let g = resolve_global(m, n)?;
                    self.push(Value::Global(g))?;
                }
                b'Q' => {
                    let (pid, d) = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.push_container(v, d)?;
                }
                b'R' => {
                    let (args, d) = self.pop()?;
                    let (callable, _) = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.push_container(v, d)?;
                }
                0x81 => {
                    // NEWOBJ cls.__new__(cls, *args): only OrderedDict is a class we model.
                    let (args, d) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.push_container(v, d)?;
                }
                b'b' => {
                    // BUILD: set state on the object below. Dict attributes (`_metadata`) and numpy dtype
                    // state carry nothing a state dict needs, so the state is checked for type and dropped.
                    let (state, _) = self.pop()?;
                    match self.top_receiving(0)? {
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
                    let (v, d) = self.stack.last().ok_or_else(|| anyhow!("corrupt pickle: DUP on empty stack"))?;
                    let n = count(v);
                    let item = (v.clone(), *d);
                    self.spend(n)?;
                    self.push_item(item)?;
                }
                0x8f => self.push_container(Value::List(Vec::new()), 0)?, // EMPTY_SET: kept as a list
                0x90 => {
                    let (items, d) = self.pop_mark()?;
                    match self.top_receiving(d)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &[u8]) -> String {
        load(data).map(|_| ()).map_err(|e| e.to_string()).expect_err("must be refused")
    }

    #[test]
    fn a_stack_flood_is_refused_at_the_stack_bound() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'N', limits::PICKLE_MAX_STACK + 1));
        assert!(err(&p).contains("pickle stack limit of 1000000 values"));
    }

    #[test]
    fn a_memo_flood_is_refused_at_the_memo_bound() {
        let mut p = vec![0x80, 2, b'N'];
        for i in 0..=limits::PICKLE_MAX_MEMO as u32 {
            p.push(b'r');
            p.extend(i.to_le_bytes());
        }
        assert!(err(&p).contains("pickle memo limit of 2000000 entries"));
    }

    #[test]
    fn depth_is_counted_through_every_way_of_nesting() {
        let deep = |open: &[u8], close: &[u8], n: usize| {
            let mut p = vec![0x80, 2];
            p.extend(open.repeat(n));
            p.extend(close.repeat(n - 1));
            p.push(b'.');
            p
        };
        let at = |n| limits::PICKLE_MAX_DEPTH + n;
        // Lists by APPEND, dicts by SETITEM, tuples by MARK, then one level under the bound reads fine.
        assert!(err(&deep(b"]", b"a", at(1))).contains("pickle depth limit"));
        let mut dicts = vec![0x80, 2, b'}'];
        dicts.extend(b"K\x00}".repeat(at(0)));
        dicts.extend(b"s".repeat(at(0)));
        dicts.push(b'.');
        assert!(err(&dicts).contains("pickle depth limit"));
        assert!(err(&deep(b"(", b"t", at(2))).contains("pickle depth limit"));
        assert!(load(&deep(b"]", b"a", limits::PICKLE_MAX_DEPTH)).is_ok());
        // Memo copies keep the depth of what they copy.
        let mut p = vec![0x80, 2, b']'];
        p.extend(b"\x85".repeat(limits::PICKLE_MAX_DEPTH - 1));
        p.extend(b"q\x00h\x00\x85.");
        assert!(err(&p).contains("pickle depth limit"));
    }
}
