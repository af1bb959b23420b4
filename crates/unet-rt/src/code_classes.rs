//! The classes of a TorchScript archive's code, and which of them the
//! network can run.
//!
//! A scripted module keeps the code of every submodule it holds, called or
//! not: MONAI's ResNet encoders hold an `AdaptiveAvgPool2d` and a `Linear`
//! head their `forward` never reads, and that unread pooling layer made a
//! scripted FlexibleUNet read as "sees the whole tile" (its overlap capped,
//! its tiles called approximate) where the traced one was exact.
//!
//! Leaving code out can hide a layer that runs, a quiet wrong answer, so
//! only what is certainly unread is left out: a module class (`class
//! X(Module):`) that code names nowhere but in the declarations holding it,
//! each of which is unread (no code reads its name from any object) or held
//! by a class left out. The entries of containers (`ModuleDict`,
//! `ModuleList`, `Sequential`) always count as read (a `ModuleDict` indexed
//! by a run-time key names none of them), and an archive with a module
//! interface (`ModuleInterface`: calls dispatched at run time) or a name
//! too long to read leaves nothing out.

use std::collections::{HashMap, HashSet};

/// A code file's path below the archive's `code/` folder (such as
/// `__torch__/torch/nn/modules/pooling.py`), and its text.
pub(crate) type CodeFile = (String, String);

/// One class of a code file.
struct Class<'t> {
    /// Qualified as declarations name it: `__torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d`.
    name: String,
    /// What it derives from: `Module`, `ModuleInterface`; empty for a
    /// plain TorchScript class (`class Gate:`).
    base: String,
    /// The class's lines, its declarations and methods.
    text: &'t str,
}

/// The longest qualified name read whole; an archive with a longer one
/// leaves nothing out (its names are not read in linear time).
const MAX_NAME: usize = 1024;

/// How far past `getattr(` its attribute's name is looked for.
const MAX_GETATTR: usize = 512;

/// A submodule a class declares: `avgpool : __torch__...AdaptiveAvgPool2d`,
/// or a container's entry, `__annotations__["0"] = __torch__...Conv2d`.
struct Held<'t> {
    /// The class of the submodule.
    class: &'t str,
    /// Whether code reads it: its attribute name read from any object, or
    /// an entry of a container (read by the container's holder,
    /// `getattr(pools, "0")`, or by a run-time key).
    read: bool,
}

/// The text of `files` the network can run: each file's text outside its
/// classes, and every class but those only held where nothing reads them.
pub(crate) fn runnable_code(files: &[CodeFile]) -> Vec<&str> {
    let mut free = Vec::new();
    let mut classes = Vec::new();
    for (path, text) in files {
        let module = path.strip_suffix(".py").unwrap_or(path).replace('/', ".");
        split_classes(&module, text, &mut free, &mut classes);
    }
    let dispatched = classes.iter().any(|c| c.base.contains("Interface"));
    let Some(named) = (!dispatched)
        .then(|| names_outside_holdings(&free, &classes))
        .flatten()
    else {
        free.extend(classes.iter().map(|c| c.text));
        return free;
    };
    let read = attributes_read(files);
    let holds: Vec<Vec<Held>> = classes.iter().map(|c| held(c, &read)).collect();
    // Left out only where nothing but its holdings names it.
    let can_leave_out =
        |class: &Class| class.base == "Module" && !named.contains(class.name.as_str());
    let unrun = unrun_classes(&classes, &holds, can_leave_out);
    free.extend(
        classes
            .iter()
            .filter(|c| !unrun.contains(c.name.as_str()))
            .map(|c| c.text),
    );
    free
}

/// Splits `text` into the classes it defines (`class Name(...):` at the
/// start of a line, up to the next line that starts unindented) and the
/// rest, free code (module-level functions, constants).
fn split_classes<'t>(
    module: &str,
    text: &'t str,
    free: &mut Vec<&'t str>,
    classes: &mut Vec<Class<'t>>,
) {
    // The piece being read: where it starts, and its class if it is one.
    let mut piece: (usize, Option<(String, String)>) = (0, None);
    let mut at = 0;
    for line in text.split_inclusive('\n').chain(std::iter::once("")) {
        let ends_text = line.is_empty();
        if ends_text || line.starts_with(|c: char| !c.is_whitespace()) {
            let opens = line.strip_prefix("class ").map(|rest| {
                let name = rest.split(['(', ':']).next().unwrap_or_default();
                let base = rest
                    .split_once('(')
                    .and_then(|(_, b)| b.split_once(')'))
                    .map_or("", |(b, _)| b);
                (name.trim().to_owned(), base.trim().to_owned())
            });
            if ends_text || opens.is_some() || piece.1.is_some() {
                let (start, class) = std::mem::replace(&mut piece, (at, opens));
                let text = &text[start..at];
                match class {
                    Some((name, base)) => classes.push(Class {
                        name: format!("{module}.{name}"),
                        base,
                        text,
                    }),
                    None if !text.is_empty() => free.push(text),
                    None => {}
                }
            }
        }
        at += line.len();
    }
}

/// The submodules a class declares, and whether code reads each (`read`:
/// the names of [`attributes_read`]; a container's entries always).
fn held<'t>(class: &Class<'t>, read: &HashSet<&str>) -> Vec<Held<'t>> {
    let container = class
        .name
        .starts_with("__torch__.torch.nn.modules.container.");
    class
        .text
        .lines()
        .filter_map(holding)
        .map(|(name, held)| Held {
            class: held,
            read: container || name.is_none_or(|name| read.contains(name)),
        })
        .collect()
}

/// A line of a class body that declares a submodule: its attribute name
/// (`None` for a container's entry, `__annotations__["0"] = ...`) and the
/// submodule's class.
fn holding(line: &str) -> Option<(Option<&str>, &str)> {
    let declaration = line.strip_prefix("  ")?;
    if declaration.starts_with(char::is_whitespace) {
        return None;
    }
    let (name, class) = match declaration.strip_prefix("__annotations__[") {
        Some(rest) => {
            let (key, class) = rest.split_once("] = ")?;
            (!key.is_empty()).then_some((None, class.trim()))?
        }
        None => {
            let (name, class) = declaration.split_once(" : ")?;
            is_identifier(name).then_some((Some(name), class.trim()))?
        }
    };
    (class.starts_with("__torch__.") && !class.contains('[')).then_some((name, class))
}

/// The qualified names (`__torch__.X`, and each without its last part:
/// `__torch__.Gate.__new__` names `__torch__.Gate`) that code names other
/// than in the declarations holding them and in their own class (its
/// methods' `self: __torch__.X`): a class created in code, typed in a
/// signature or a local annotation. `None` where a name runs past
/// [`MAX_NAME`]. Each name is read once, from its start.
fn names_outside_holdings<'t>(free: &[&'t str], classes: &[Class<'t>]) -> Option<HashSet<&'t str>> {
    let mut named = HashSet::new();
    let pieces = free
        .iter()
        .map(|&text| (text, None))
        .chain(classes.iter().map(|c| (c.text, Some(c.name.as_str()))));
    for (text, own) in pieces {
        for line in text.lines().filter(|line| holding(line).is_none()) {
            let mut rest = line;
            while let Some(at) = rest.find("__torch__.") {
                let from = &rest[at..];
                let end = from
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(from.len());
                if end > MAX_NAME {
                    return None;
                }
                let name = &from[..end];
                let parent = name.rsplit_once('.').map_or(name, |(parent, _)| parent);
                for name in [name, parent] {
                    if Some(name) != own {
                        named.insert(name);
                    }
                }
                rest = &from[end..];
            }
        }
    }
    Some(named)
}

/// Every attribute name any code reads, from any object: `x.name` (the
/// code TorchScript writes, `avgpool = self.avgpool`, and
/// `layer1 = encoder.layer1` where an outer module reaches into an inner
/// one) and `getattr(x, "name")`. Read from anything, a name counts as
/// read for every class that declares it: a layer is left out only where
/// no code anywhere names it.
fn attributes_read(files: &[CodeFile]) -> HashSet<&str> {
    let mut read = HashSet::new();
    for (_, text) in files {
        for (at, _) in text.match_indices('.') {
            let rest = &text[at + 1..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                read.insert(&rest[..end]);
            }
        }
        for (at, _) in text.match_indices("getattr(") {
            let call = &text[at..];
            // On a character's boundary: a name of non-ASCII letters that
            // crossed MAX_GETATTR panicked here (a bug, on any model file).
            let mut end = call.len().min(MAX_GETATTR);
            while !call.is_char_boundary(end) {
                end -= 1;
            }
            let call = &call[..end];
            let call = call.split(['\n', ')']).next().unwrap_or_default();
            if let Some((_, quoted)) = call.split_once(", \"") {
                read.insert(quoted.trim_end_matches('"'));
            }
        }
    }
    read
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The classes nothing runs: held at least once, and every holding either
/// unread or in a class nothing runs. A worklist over the holdings, linear
/// in their number (a hostile archive may declare millions).
fn unrun_classes<'t>(
    classes: &'t [Class<'t>],
    holds: &'t [Vec<Held<'t>>],
    can_leave_out: impl Fn(&Class) -> bool,
) -> HashSet<&'t str> {
    // A name several classes share (a hostile archive) is left out only
    // where each of them can be.
    let mut kept: HashSet<&str> = HashSet::new();
    for class in classes.iter().filter(|c| !can_leave_out(c)) {
        kept.insert(class.name.as_str());
    }
    // For each held class: the holdings that read it from a class still run.
    let mut live: HashMap<&str, usize> = HashMap::new();
    for held in holds.iter().flatten() {
        *live.entry(held.class).or_default() += usize::from(held.read);
    }
    let holders: HashMap<&str, Vec<usize>> =
        classes
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut by_name, (i, class)| {
                by_name.entry(class.name.as_str()).or_default().push(i);
                by_name
            });
    let mut unrun: HashSet<&str> = HashSet::new();
    let mut work: Vec<&str> = live
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(&class, _)| class)
        .collect();
    while let Some(class) = work.pop() {
        if kept.contains(class) || !unrun.insert(class) {
            continue;
        }
        for &i in holders.get(class).into_iter().flatten() {
            for held in holds[i].iter().filter(|h| h.read) {
                if let Some(n) = live.get_mut(held.class) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        work.push(held.class);
                    }
                }
            }
        }
    }
    unrun
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> CodeFile {
        (path.to_owned(), text.to_owned())
    }

    const POOLING: &str = "class AdaptiveAvgPool2d(Module):\n  \
        __parameters__ = []\n  output_size : Final[int] = 1\n  \
        def forward(self: __torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d,\n    input: Tensor) -> Tensor:\n    \
        _0 = __torch__.torch.nn.functional.adaptive_avg_pool2d\n    return _0(input, [1, 1], )\n";

    fn net(forward: &str) -> Vec<CodeFile> {
        vec![
            file(
                "__torch__.py",
                &format!(
                    "class Net(Module):\n  training : bool\n  \
                     enc : __torch__.torch.nn.modules.conv.Conv2d\n  \
                     avgpool : __torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d\n  \
                     def forward(self: __torch__.Net,\n    x: Tensor) -> Tensor:\n    \
                     enc = self.enc\n{forward}    return (enc).forward(x, )\n"
                ),
            ),
            file(
                "__torch__/torch/nn/modules/conv.py",
                "class Conv2d(Module):\n  def forward(self, input: Tensor) -> Tensor:\n    \
                 return torch.conv2d(input, self.weight)\n",
            ),
            file("__torch__/torch/nn/modules/pooling.py", POOLING),
        ]
    }

    fn runs_pooling(files: &[CodeFile]) -> bool {
        runnable_code(files)
            .iter()
            .any(|text| text.contains("adaptive_avg_pool2d"))
    }

    #[test]
    fn a_held_submodule_its_holder_never_reads_is_not_run() {
        assert!(!runs_pooling(&net("")));
        assert!(runs_pooling(&net("    avgpool = self.avgpool\n")));
        assert!(runs_pooling(&net("    _0 = getattr(self, \"avgpool\")\n")));
        // Another attribute whose name starts alike is not a read.
        assert!(!runs_pooling(&net("    avgpool2 = self.avgpool2\n")));
        // Read from another object (an outer module reaching in) counts.
        assert!(runs_pooling(&net("    pool = enc.avgpool\n")));
        // The conv and the root class run.
        let files = net("");
        let code = runnable_code(&files);
        assert!(code.iter().any(|t| t.contains("torch.conv2d")));
        assert!(code.iter().any(|t| t.starts_with("class Net(")));
    }

    #[test]
    fn what_an_unread_container_holds_is_not_run_and_a_read_one_runs() {
        let files = |read: &str| {
            vec![
                file(
                    "__torch__.py",
                    &format!(
                        "class Net(Module):\n  \
                         head : __torch__.torch.nn.modules.container.Sequential\n  \
                         def forward(self, x: Tensor) -> Tensor:\n{read}    return x\n"
                    ),
                ),
                file(
                    "__torch__/torch/nn/modules/container.py",
                    "class Sequential(Module):\n  \
                     __annotations__[\"0\"] = __torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d\n  \
                     def forward(self, input: Tensor) -> Tensor:\n    \
                     _0 = getattr(self, \"0\")\n    return (_0).forward(input, )\n",
                ),
                file("__torch__/torch/nn/modules/pooling.py", POOLING),
            ]
        };
        assert!(!runs_pooling(&files("")));
        assert!(runs_pooling(&files("    head = self.head\n")));
    }

    #[test]
    fn one_class_read_by_any_holder_runs_and_free_code_always_runs() {
        let mut files = net("");
        files.push(file(
            "__torch__/other.py",
            "def helper(x: Tensor) -> Tensor:\n  return torch.fft_rfft2(x)\n\
             class Other(Module):\n  \
             pool : __torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d\n  \
             def forward(self, x: Tensor) -> Tensor:\n    pool = self.pool\n    return x\n",
        ));
        assert!(runs_pooling(&files));
        assert!(runnable_code(&files)
            .iter()
            .any(|t| t.starts_with("def helper")));
        // A class no declaration names (the root, an interface) always runs.
        let lone = [file("__torch__/torch/nn/modules/pooling.py", POOLING)];
        assert!(runs_pooling(&lone));
    }

    /// `net("")` with a class `extra` added to the root file.
    fn with(extra: &str) -> Vec<CodeFile> {
        let mut files = net("");
        files[0].1.push_str(extra);
        files
    }

    #[test]
    fn nothing_is_left_out_where_calls_are_dispatched_at_run_time() {
        // A module interface: `impl : __torch__.Iface` may be any class
        // with its method, the unread avgpool's included.
        let iface =
            "class Iface(ModuleInterface):\n  def forward(self, x: Tensor) -> Tensor:\n    pass\n";
        assert!(runs_pooling(&with(iface)));
        assert!(!runs_pooling(&with(
            "class Plain(Module):\n  training : bool\n"
        )));
    }

    #[test]
    fn classes_named_outside_their_holdings_are_never_left_out() {
        // Created in code, typed in a signature or a local annotation.
        let pool = "__torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d";
        for use_ in [
            format!("  g = {pool}.__new__({pool})\n"),
            format!("  def f(self, m: {pool}) -> Tensor:\n    return m.x\n"),
            format!("    blk : {pool} = blocks[key]\n"),
        ] {
            let extra =
                format!("class User(Module):\n  def forward(self, x: Tensor) -> Tensor:\n{use_}");
            assert!(runs_pooling(&with(&extra)), "{use_}");
        }
        // A TorchScript class that is not a module runs wherever it is held.
        let files = vec![
            file(
                "__torch__.py",
                "class Net(Module):\n  cfg : __torch__.Gate\n  def forward(self, x: Tensor) -> Tensor:\n    \
                 return x\nclass Gate:\n  def apply(self: __torch__.Gate, x: Tensor) -> Tensor:\n    \
                 return torch.adaptive_avg_pool2d(x, [1, 1])\n",
            ),
        ];
        assert!(runnable_code(&files)
            .iter()
            .any(|t| t.contains("adaptive_avg_pool2d")));
    }

    #[test]
    fn a_module_dicts_entries_count_as_read_whatever_their_names() {
        // Indexed by a run-time key (`blocks[key]`), no entry's name appears.
        let files = vec![
            file(
                "__torch__.py",
                "class Net(Module):\n  blocks : __torch__.torch.nn.modules.container.ModuleDict\n  \
                 def forward(self, x: Tensor) -> Tensor:\n    blocks = self.blocks\n    return x\n",
            ),
            file(
                "__torch__/torch/nn/modules/container.py",
                "class ModuleDict(Module):\n  \
                 gate : __torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d\n  \
                 def __len__(self) -> int:\n    return 1\n",
            ),
            file("__torch__/torch/nn/modules/pooling.py", POOLING),
        ];
        assert!(runs_pooling(&files));
    }

    #[test]
    fn hostile_code_is_read_in_linear_time_or_leaves_nothing_out() {
        // getattr( without a closing bracket, millions of times.
        let mut files = net("");
        files.push(file("__torch__/junk.py", &"getattr(".repeat(1 << 20)));
        assert!(!runs_pooling(&files));
        files.push(file(
            "__torch__/junk2.py",
            &format!("x = getattr(a, \"{}", "a".repeat(1 << 20)),
        ));
        assert!(!runs_pooling(&files));
        // Multi-byte characters across the getattr bound.
        for pad in 0..4 {
            let text = format!("x = getattr(a, \"{}{}", "a".repeat(pad), "é".repeat(600));
            files.push(file("__torch__/wide.py", &text));
        }
        assert!(!runs_pooling(&files));
        // Names of many parts, each read once.
        let dotted = format!("x = __torch__.{}\n", "a.".repeat(MAX_NAME / 2 - 8)).repeat(1 << 14);
        files.push(file("__torch__/dotted.py", &dotted));
        assert!(!runs_pooling(&files));
        // A name longer than MAX_NAME: nothing is left out.
        let long = format!("x = __torch__.{}\n", "a.".repeat(MAX_NAME));
        files.push(file("__torch__/long.py", &long));
        assert!(runs_pooling(&files));
    }

    #[test]
    fn classes_split_at_unindented_lines_and_mangled_modules_keep_their_path() {
        let mut free = Vec::new();
        let mut classes = Vec::new();
        let text = "import x\nclass A(Module):\n  a : int\n\n  def f(self):\n    pass\n\
                    CONSTANT = 1\nclass B:\n  pass\n";
        split_classes(
            "__torch__.m.___torch_mangle_3",
            text,
            &mut free,
            &mut classes,
        );
        let names: Vec<(&str, &str)> = classes
            .iter()
            .map(|c| (c.name.as_str(), c.base.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("__torch__.m.___torch_mangle_3.A", "Module"),
                ("__torch__.m.___torch_mangle_3.B", "")
            ]
        );
        assert_eq!(free, ["import x\n", "CONSTANT = 1\n"]);
        assert!(classes[0].text.ends_with("    pass\n"));
        let whole: String = free
            .iter()
            .chain(classes.iter().map(|c| &c.text))
            .copied()
            .collect();
        assert_eq!(whole.len(), text.len());
    }

    #[test]
    fn a_chain_of_millions_of_holdings_is_walked_in_linear_time() {
        let n = 200_000;
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "class C{i}(Module):\n  n{i} : __torch__.big.C{}\n  \
                 def forward(self, x: Tensor) -> Tensor:\n    n{i} = self.n{i}\n    return x\n",
                i + 1
            ));
        }
        // The root C0 holds C1 unread: nothing below it runs.
        let text = text.replacen("    n0 = self.n0\n", "", 1);
        let files = [file("__torch__/big.py", &text)];
        let runnable = runnable_code(&files);
        assert_eq!(runnable.len(), 1, "only C0 runs");
        assert!(runnable[0].starts_with("class C0("));
    }
}
