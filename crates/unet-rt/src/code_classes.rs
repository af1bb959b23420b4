//! The classes of a TorchScript archive's code, and which of them the
//! network can run.
//!
//! A scripted module keeps the code of every submodule it holds, called or
//! not: MONAI's ResNet encoders hold an `AdaptiveAvgPool2d` and a `Linear`
//! head their `forward` never reads, and that unread pooling layer made a
//! scripted FlexibleUNet read as "sees the whole tile" (its overlap capped,
//! its tiles called approximate) where the traced one was exact. A class
//! whose every holder leaves it unread, or is itself unread, is not run.

use std::collections::{HashMap, HashSet};

/// A code file's path below the archive's `code/` folder (such as
/// `__torch__/torch/nn/modules/pooling.py`), and its text.
pub(crate) type CodeFile = (String, String);

/// One class of a code file.
struct Class<'t> {
    /// Qualified as declarations name it: `__torch__.torch.nn.modules.pooling.AdaptiveAvgPool2d`.
    name: String,
    /// The class's lines, its declarations and methods.
    text: &'t str,
}

/// A submodule a class declares: `avgpool : __torch__...AdaptiveAvgPool2d`,
/// or a container's entry, `__annotations__["0"] = __torch__...Conv2d`.
struct Held<'t> {
    /// The class of the submodule.
    class: &'t str,
    /// Whether the holder's code reads it: a container's entries are read
    /// by the code that holds the container (`getattr(pools, "0")`), so
    /// they count as read.
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
    let read = attributes_read(files);
    let holds: Vec<Vec<Held>> = classes.iter().map(|c| held(c.text, &read)).collect();
    let unrun = unrun_classes(&classes, &holds);
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
    let mut piece: (usize, Option<String>) = (0, None);
    let mut at = 0;
    for line in text.split_inclusive('\n').chain(std::iter::once("")) {
        let ends_text = line.is_empty();
        if ends_text || line.starts_with(|c: char| !c.is_whitespace()) {
            let opens = line.strip_prefix("class ").map(|rest| {
                let name = rest.split(['(', ':']).next().unwrap_or_default();
                name.trim().to_owned()
            });
            if ends_text || opens.is_some() || piece.1.is_some() {
                let (start, class) = std::mem::replace(&mut piece, (at, opens));
                let text = &text[start..at];
                match class {
                    Some(name) => classes.push(Class {
                        name: format!("{module}.{name}"),
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

/// The submodules a class's text declares, and whether any code reads
/// each (`read`: the names of [`attributes_read`]).
fn held<'t>(text: &'t str, read: &HashSet<&str>) -> Vec<Held<'t>> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(declaration) = line.strip_prefix("  ") else {
            continue;
        };
        if declaration.starts_with(char::is_whitespace) {
            continue;
        }
        if let Some((key, class)) = declaration
            .strip_prefix("__annotations__[")
            .and_then(|rest| rest.split_once("] = "))
        {
            if !key.is_empty() && class.trim().starts_with("__torch__.") {
                found.push(Held {
                    class: class.trim(),
                    read: true,
                });
            }
        } else if let Some((name, class)) = declaration.split_once(" : ") {
            let class = class.trim();
            if is_identifier(name) && class.starts_with("__torch__.") && !class.contains('[') {
                found.push(Held {
                    class,
                    read: read.contains(name),
                });
            }
        }
    }
    found
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
            let call = &call[..call.find(')').unwrap_or(call.len())];
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
fn unrun_classes<'t>(classes: &'t [Class<'t>], holds: &'t [Vec<Held<'t>>]) -> HashSet<&'t str> {
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
        if !unrun.insert(class) {
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
        let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "__torch__.m.___torch_mangle_3.A",
                "__torch__.m.___torch_mangle_3.B"
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
