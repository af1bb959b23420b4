//! Reading the tensor records out of a TorchScript archive's pickles
//! (`data.pkl`, `constants.pkl`) without running them.
//!
//! libtorch trusts these: a storage whose pickle declares more elements than
//! its `data/N` record holds is read past its end (a segfault, or weights
//! taken from whatever memory follows), and a tensor view reaching beyond
//! its storage likewise. So before libtorch sees an archive, the loader
//! replays its pickles on a small stack machine that understands just what
//! torch's pickler writes (protocol 2: globals, strings, integers, tuples,
//! persistent ids, memo) and collects every storage and every tensor view.
//! Anything else becomes an opaque value; an opcode it does not know stops
//! the scan with [`Scan::Unknown`], and the archive is then left to
//! libtorch's own reader, which refuses such bytes.

use std::collections::HashMap;
use std::rc::Rc;

/// One storage a pickle refers to through a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storage {
    /// The record's name inside the pickle's data folder (`data/<key>`).
    pub key: Rc<str>,
    /// The storage class, e.g. `FloatStorage`.
    pub class: Rc<str>,
    /// Elements the pickle declares.
    pub numel: u64,
}

impl Storage {
    /// Bytes per element of the storage class (1 for classes not known here:
    /// the bound is then weaker but still sound).
    pub fn element_size(&self) -> u64 {
        match &*self.class {
            "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
            "ComplexDoubleStorage" => 16,
            "FloatStorage" | "IntStorage" | "QInt32Storage" => 4,
            "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
            _ => 1,
        }
    }
}

/// A tensor view on a storage: `torch._utils._rebuild_tensor_v2(storage,
/// offset, size, stride, ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// The storage's key.
    pub key: Rc<str>,
    /// Elements of the storage the pickle declares.
    pub storage_numel: u64,
    /// One past the last element the view reaches, or `None` when the view
    /// is empty; `Err` when its arithmetic overflows or a stride is negative.
    pub extent: Result<Option<u64>, String>,
}

/// What a pickle holds, as far as the loader cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Records {
    pub storages: Vec<Storage>,
    pub views: Vec<View>,
}

/// How a scan ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The pickle was read to its `STOP`.
    Complete(Records),
    /// An opcode this reader does not know (at the given offset): nothing
    /// can be said about the records.
    Unknown { opcode: u8, offset: usize },
    /// Damage libtorch trusts before it fails, or never fails on: an
    /// argument's length running past the bytes (it allocates the length
    /// first: gigabytes, for a flipped bit), no `STOP`, or a memo key far
    /// beyond any pickler's count (it sizes its memo table to the key: a
    /// `std::bad_alloc`, or gigabytes filled). The loader refuses these
    /// itself; the text says which, as a sentence's end.
    Damaged(String),
    /// The bytes are not a well-formed pickle (stack underflow, a memo key
    /// that was never set, bounds exceeded).
    Malformed(String),
}

/// A value on the scanner's stack. Strings and tuples are shared: `DUP`
/// and memo reads copy values, and a 106 KB pickle that copied one 32 MiB
/// string 400 times took 12.8 GB (the process aborted when allocation
/// failed).
#[derive(Debug, Clone)]
enum Value {
    Str(Rc<str>),
    Int(i128),
    /// Its items, and how deeply tuples nest in it (1 for a tuple of no
    /// tuple): dropping nested `Rc`s recurses, and 60,000 levels overflowed
    /// the loading thread's stack.
    Tuple(Rc<Vec<Value>>, usize),
    Global(Rc<str>, Rc<str>),
    Storage {
        key: Rc<str>,
        numel: u64,
    },
    Mark,
    Other,
}

/// Deepest stack and largest memo (count and key) the scanner accepts:
/// torch's pickles of real networks stay in the hundreds, and picklers
/// number memo keys from 0 up.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 22;

/// Deepest nesting of tuples the scanner accepts: torch's pickles nest a
/// few (a tensor's arguments, its size).
const MAX_TUPLE_DEPTH: usize = 1000;

/// Longest storage key the scanner accepts: torch names storages by their
/// index ("0", "17"), and every key becomes a record name looked up in the
/// archive.
const MAX_KEY: usize = 1024;

/// Replays `bytes` and collects its storages and tensor views.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    match Machine::default().run(bytes) {
        Ok(records) => Scan::Complete(records),
        Err(Stop::Unknown { opcode, offset }) => Scan::Unknown { opcode, offset },
        Err(Stop::Damaged(why)) => Scan::Damaged(why),
        Err(Stop::Malformed(why)) => Scan::Malformed(why),
    }
}

enum Stop {
    Unknown { opcode: u8, offset: usize },
    Damaged(String),
    Malformed(String),
}

/// The pickle ends before its `STOP`: `detail` says where.
fn cut_short(detail: impl std::fmt::Display) -> Stop {
    Stop::Damaged(format!("it ends before its pickle does ({detail})"))
}

fn malformed(why: impl Into<String>) -> Stop {
    Stop::Malformed(why.into())
}

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
    records: Records,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                cut_short(format!(
                    "{n} bytes wanted at offset {} of {}",
                    self.at,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, Stop> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, Stop> {
        usize::try_from(self.le(n)?).map_err(|_| cut_short("a length beyond the address space"))
    }

    fn line(&mut self) -> Result<Rc<str>, Stop> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| cut_short(format!("a text line at offset {} has no end", self.at)))?;
        let text = Rc::from(String::from_utf8_lossy(&rest[..end]));
        self.at += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: usize) -> Result<Value, Stop> {
        Ok(Value::Str(Rc::from(String::from_utf8_lossy(self.take(n)?))))
    }
}

impl Machine {
    fn push(&mut self, value: Value) -> Result<(), Stop> {
        if self.stack.len() >= MAX_STACK {
            return Err(malformed("stack deeper than the scanner accepts"));
        }
        self.stack.push(value);
        Ok(())
    }

    /// Pushes a tuple of `items`.
    fn push_tuple(&mut self, items: Vec<Value>) -> Result<(), Stop> {
        let inner = items
            .iter()
            .map(|item| match item {
                Value::Tuple(_, depth) => *depth,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if inner >= MAX_TUPLE_DEPTH {
            return Err(Stop::Damaged(format!(
                "it nests tuples deeper than the {MAX_TUPLE_DEPTH} levels any model's pickle has"
            )));
        }
        self.push(Value::Tuple(Rc::new(items), inner + 1))
    }

    fn pop(&mut self) -> Result<Value, Stop> {
        self.stack.pop().ok_or_else(|| malformed("stack underflow"))
    }

    fn top(&self) -> Result<&Value, Stop> {
        self.stack
            .last()
            .ok_or_else(|| malformed("stack underflow"))
    }

    /// Pops everything above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, Stop> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| malformed("no mark"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn put(&mut self, key: u64) -> Result<(), Stop> {
        if key >= MAX_MEMO as u64 {
            return Err(Stop::Damaged(format!(
                "its memo key {key} is beyond the {MAX_MEMO} any model's pickle numbers"
            )));
        }
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(malformed("memo larger than the scanner accepts"));
        }
        let value = self.top()?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn get(&mut self, key: u64) -> Result<(), Stop> {
        let value = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| malformed(format!("memo key {key} was never set")))?;
        self.push(value)
    }

    fn run(mut self, bytes: &[u8]) -> Result<Records, Stop> {
        let mut r = Reader { bytes, at: 0 };
        while r.at < bytes.len() {
            let offset = r.at;
            let opcode = r.u8()?;
            match opcode {
                0x80 => {
                    r.u8()?; // PROTO n
                }
                0x95 => {
                    r.le(8)?; // FRAME length
                }
                b'.' => return Ok(self.records), // STOP
                b'(' => self.push(Value::Mark)?,
                b')' => self.push_tuple(Vec::new())?,
                b']' | b'}' | 0x8f | b'N' | 0x88 | 0x89 => self.push(Value::Other)?, // empty list/dict/set, None, bools
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    if self.stack.len() < n {
                        return Err(malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_tuple(items)?;
                }
                b'a' => {
                    self.pop()?; // APPEND
                }
                b'e' | 0x90 => {
                    self.pop_mark()?; // APPENDS, ADDITEMS
                }
                b's' => {
                    self.pop()?; // SETITEM
                    self.pop()?;
                }
                b'u' => {
                    self.pop_mark()?; // SETITEMS
                }
                0x91 => {
                    self.pop_mark()?; // FROZENSET
                    self.push(Value::Other)?;
                }
                b'l' | b'd' => {
                    self.pop_mark()?; // LIST, DICT
                    self.push(Value::Other)?;
                }
                b'0' => {
                    self.pop()?; // POP
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'2' => {
                    let top = self.top()?.clone(); // DUP
                    self.push(top)?;
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.push(Value::Global(module, name))?;
                }
                0x93 => {
                    let name = self.pop()?; // STACK_GLOBAL
                    let module = self.pop()?;
                    let value = match (module, name) {
                        (Value::Str(m), Value::Str(n)) => Value::Global(m, n),
                        _ => Value::Other,
                    };
                    self.push(value)?;
                }
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID
                    let value = self.persistent(pid)?;
                    self.push(value)?;
                }
                b'R' => {
                    let args = self.pop()?; // REDUCE
                    let callable = self.pop()?;
                    self.reduce(&callable, &args);
                    self.push(Value::Other)?;
                }
                0x81 => {
                    self.pop()?; // NEWOBJ
                    self.pop()?;
                    self.push(Value::Other)?;
                }
                0x92 => {
                    self.pop()?; // NEWOBJ_EX
                    self.pop()?;
                    self.pop()?;
                    self.push(Value::Other)?;
                }
                b'b' => {
                    self.pop()?; // BUILD: the object stays
                    if self.stack.is_empty() {
                        return Err(malformed("stack underflow"));
                    }
                }
                b'J' => {
                    let v = r.le(4)? as u32 as i32; // BININT
                    self.push(Value::Int(i128::from(v)))?;
                }
                b'K' => {
                    let v = r.u8()?; // BININT1
                    self.push(Value::Int(i128::from(v)))?;
                }
                b'M' => {
                    let v = r.le(2)?; // BININT2
                    self.push(Value::Int(i128::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(r.u8()?); // LONG1
                    let bytes = r.take(n)?;
                    self.push(long(bytes))?;
                }
                0x8b => {
                    let n = r.len(4)?; // LONG4
                    let bytes = r.take(n)?;
                    self.push(long(bytes))?;
                }
                b'G' => {
                    r.take(8)?; // BINFLOAT
                    self.push(Value::Other)?;
                }
                b'X' => {
                    let n = r.len(4)?; // BINUNICODE
                    let v = r.text(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(r.u8()?); // SHORT_BINUNICODE
                    let v = r.text(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = r.len(8)?; // BINUNICODE8
                    let v = r.text(n)?;
                    self.push(v)?;
                }
                b'U' | b'C' => {
                    let n = usize::from(r.u8()?); // SHORT_BINSTRING, SHORT_BINBYTES
                    let v = r.text(n)?;
                    self.push(v)?;
                }
                b'T' | b'B' => {
                    let n = r.len(4)?; // BINSTRING, BINBYTES
                    let v = r.text(n)?;
                    self.push(v)?;
                }
                0x8e => {
                    let n = r.len(8)?; // BINBYTES8
                    r.take(n)?;
                    self.push(Value::Other)?;
                }
                b'q' => {
                    let key = r.le(1)?; // BINPUT
                    self.put(key)?;
                }
                b'r' => {
                    let key = r.le(4)?; // LONG_BINPUT
                    self.put(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64; // MEMOIZE
                    self.put(key)?;
                }
                b'h' => {
                    let key = r.le(1)?; // BINGET
                    self.get(key)?;
                }
                b'j' => {
                    let key = r.le(4)?; // LONG_BINGET
                    self.get(key)?;
                }
                _ => return Err(Stop::Unknown { opcode, offset }),
            }
        }
        Err(cut_short(format!(
            "no STOP opcode in {} bytes",
            bytes.len()
        )))
    }

    /// The value a persistent id stands for: torch writes a storage as
    /// `("storage", torch.<Class>Storage, key, location, numel)`.
    fn persistent(&mut self, pid: Value) -> Result<Value, Stop> {
        let Value::Tuple(items, _) = pid else {
            return Ok(Value::Other);
        };
        let [Value::Str(tag), Value::Global(module, class), Value::Str(key), _, Value::Int(numel)] =
            items.as_slice()
        else {
            return Ok(Value::Other);
        };
        if &**tag != "storage" || &**module != "torch" {
            return Ok(Value::Other);
        }
        if key.len() > MAX_KEY {
            return Err(Stop::Damaged(format!(
                "a storage key of {} bytes, beyond the {MAX_KEY} any model's pickle has",
                key.len()
            )));
        }
        // A negative count is recorded as an impossible one, so that the
        // record check refuses it.
        let numel = u64::try_from(*numel).unwrap_or(u64::MAX);
        self.records.storages.push(Storage {
            key: key.clone(),
            class: class.clone(),
            numel,
        });
        Ok(Value::Storage {
            key: key.clone(),
            numel,
        })
    }

    /// Records the view of a tensor rebuilt from a storage.
    fn reduce(&mut self, callable: &Value, args: &Value) {
        let Value::Global(module, name) = callable else {
            return;
        };
        if &**module != "torch._utils" || !name.starts_with("_rebuild_tensor") {
            return;
        }
        let Value::Tuple(args, _) = args else { return };
        let [Value::Storage { key, numel }, Value::Int(offset), Value::Tuple(size, _), Value::Tuple(stride, _), ..] =
            args.as_slice()
        else {
            return;
        };
        let ints = |items: &[Value]| -> Option<Vec<i128>> {
            items
                .iter()
                .map(|v| {
                    if let Value::Int(i) = v {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect()
        };
        let extent = match (ints(size), ints(stride)) {
            (Some(size), Some(stride)) => view_extent(*offset, &size, &stride),
            _ => Err("sizes or strides that are not integers".to_owned()),
        };
        self.records.views.push(View {
            key: key.clone(),
            storage_numel: *numel,
            extent,
        });
    }
}

fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 16 {
        return Value::Int(i128::MAX);
    }
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
        buf[bytes.len()..].fill(0xff);
    }
    Value::Int(i128::from_le_bytes(buf))
}

/// One past the last element a strided view reaches (`None` when it is
/// empty), in checked arithmetic.
fn view_extent(offset: i128, size: &[i128], stride: &[i128]) -> Result<Option<u64>, String> {
    if size.len() != stride.len() {
        return Err(format!("{} sizes but {} strides", size.len(), stride.len()));
    }
    if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
        return Err("a negative offset, size or stride".to_owned());
    }
    if size.contains(&0) {
        return Ok(None);
    }
    let overflow = || "sizes and strides that overflow".to_owned();
    let mut last = offset;
    for (&n, &s) in size.iter().zip(stride) {
        last = (n - 1)
            .checked_mul(s)
            .and_then(|d| last.checked_add(d))
            .ok_or_else(overflow)?;
    }
    last.checked_add(1)
        .and_then(|end| u64::try_from(end).ok())
        .map(Some)
        .ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle as torch writes one weight: `{"weight": _rebuild_tensor_v2(
    /// persistent(("storage", torch.FloatStorage, "0", "cpu", numel)), 0,
    /// size, stride, False, OrderedDict())}`, with the key memoised first.
    fn weight_pickle(numel: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'X', 1, 0, 0, 0, b'0', b'q', 5, b'0', b'}', b'('];
        p.extend_from_slice(b"X\x06\x00\x00\x00weight");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nh\x05X\x03\x00\x00\x00cpuK",
        );
        p.extend_from_slice(&[numel, b't', b'Q', b'K', 0, b'(']);
        for &s in size {
            p.extend_from_slice(&[b'K', s]);
        }
        p.push(b't');
        p.push(b'(');
        for &s in stride {
            p.extend_from_slice(&[b'K', s]);
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRu.");
        p
    }

    #[test]
    fn finds_storages_and_views_through_the_memo() {
        let Scan::Complete(records) = scan(&weight_pickle(36, &[4, 1, 3, 3], &[9, 9, 3, 1])) else {
            panic!("scan failed")
        };
        assert_eq!(
            records.storages,
            [Storage {
                key: "0".into(),
                class: "FloatStorage".into(),
                numel: 36
            }]
        );
        assert_eq!(records.storages[0].element_size(), 4);
        assert_eq!(
            records.views,
            [View {
                key: "0".into(),
                storage_numel: 36,
                extent: Ok(Some(36))
            }]
        );
    }

    #[test]
    fn view_extents() {
        assert_eq!(view_extent(0, &[4, 1, 3, 3], &[9, 9, 3, 1]), Ok(Some(36)));
        assert_eq!(view_extent(5, &[2, 3], &[1, 2]), Ok(Some(11)));
        assert_eq!(view_extent(7, &[0, 3], &[1, 2]), Ok(None));
        assert_eq!(view_extent(0, &[], &[]), Ok(Some(1)));
        assert!(view_extent(0, &[2], &[1, 1]).is_err());
        assert!(view_extent(0, &[2], &[-1]).is_err());
        assert!(view_extent(0, &[i128::MAX, 3], &[i128::MAX, 1]).is_err());
        assert!(view_extent(0, &[1 << 70], &[1 << 10]).is_err());
        // An offset from a LONG of more than 16 bytes: one past it overflows.
        assert!(view_extent(i128::MAX, &[1], &[1]).is_err());
    }

    #[test]
    fn tuples_nested_beyond_any_models_are_refused_not_a_stack_overflow() {
        let nested = |levels: usize| {
            let mut p = vec![0x80, 2, b')'];
            p.extend(std::iter::repeat_n(0x85, levels)); // TUPLE1
            p.push(b'.');
            p
        };
        assert!(matches!(
            scan(&nested(MAX_TUPLE_DEPTH - 1)),
            Scan::Complete(_)
        ));
        for levels in [MAX_TUPLE_DEPTH, 60_000] {
            assert!(
                matches!(scan(&nested(levels)), Scan::Damaged(ref why) if why.contains("nests tuples deeper")),
                "{levels}"
            );
        }
    }

    #[test]
    fn copies_of_a_large_string_share_it() {
        // One 32 MiB string duplicated 400 times took 12.8 GB.
        let mut p = vec![0x80, 2, 0x8d];
        p.extend_from_slice(&(32u64 << 20).to_le_bytes());
        p.resize(p.len() + (32 << 20), b'a');
        p.extend(std::iter::repeat_n(b'2', 400)); // DUP
        p.push(b'.');
        let started = std::time::Instant::now();
        assert!(matches!(scan(&p), Scan::Complete(_)));
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn a_storage_key_beyond_any_models_is_refused() {
        let mut p = weight_pickle(36, &[4, 1, 3, 3], &[9, 9, 3, 1]);
        // The key "0" (BINUNICODE of 1 byte) becomes 2000 bytes.
        let at = 2;
        assert_eq!(&p[at..at + 6], b"X\x01\x00\x00\x000");
        let key = vec![b'7'; 2000];
        let mut long_key = vec![b'X'];
        long_key.extend_from_slice(&2000u32.to_le_bytes());
        long_key.extend_from_slice(&key);
        p.splice(at..at + 6, long_key);
        assert!(
            matches!(scan(&p), Scan::Damaged(ref why) if why.contains("a storage key of 2000 bytes")),
            "{:?}",
            scan(&p)
        );
    }

    #[test]
    fn damaged_pickles_are_refused_malformed_or_unknown_never_a_panic() {
        let good = weight_pickle(36, &[4, 1, 3, 3], &[9, 9, 3, 1]);
        for cut in 0..good.len() {
            assert!(
                matches!(scan(&good[..cut]), Scan::Damaged(_)),
                "cut at {cut}"
            );
        }
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                let _ = scan(&bad);
            }
        }
        assert!(matches!(
            scan(&[0x80, 2, 0xff]),
            Scan::Unknown {
                opcode: 0xff,
                offset: 2
            }
        ));
        assert!(matches!(scan(b"h\x07."), Scan::Malformed(_)));
        assert!(matches!(scan(b"t."), Scan::Malformed(_)));
        // LONG_BINPUT 2^28: libtorch would fill a memo table of 4 GiB.
        assert!(
            matches!(scan(b"N\x72\x00\x00\x00\x10."), Scan::Damaged(ref why) if why.contains("memo key 268435456"))
        );
        assert!(matches!(scan(b"N\x72\xff\xff\x3f\x00."), Scan::Complete(_)));
        // A flipped bit that makes NEWFALSE (0x89) a BINUNICODE8 (0x8d): the
        // next 8 bytes read as a length of gigabytes.
        let mut flipped = good.clone();
        let newfalse = flipped.iter().rposition(|&b| b == 0x89).expect("NEWFALSE");
        flipped[newfalse] = 0x8d;
        assert!(
            matches!(scan(&flipped), Scan::Damaged(ref why) if why.contains("bytes wanted at offset 136")),
            "{:?}",
            scan(&flipped)
        );
    }

    #[test]
    fn longs_are_signed_little_endian() {
        assert!(matches!(long(&[0xff]), Value::Int(-1)));
        assert!(matches!(long(&[0x00, 0x01]), Value::Int(256)));
        assert!(matches!(long(&[]), Value::Int(0)));
        assert!(matches!(long(&[1; 17]), Value::Int(i128::MAX)));
    }

    proptest::proptest! {
        /// Any bytes: the scanner ends (it only moves forward) and never panics.
        #[test]
        fn any_bytes_scan_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = scan(&bytes);
        }

        /// A real weight pickle with bytes overwritten anywhere: whatever the
        /// scan makes of it, a view it reports has a checked extent.
        #[test]
        fn damaged_weight_pickles_scan_without_panic(
            edits in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..6),
        ) {
            let mut bytes = weight_pickle(36, &[4, 1, 3, 3], &[9, 9, 3, 1]);
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            let _ = scan(&bytes);
        }
    }
}
