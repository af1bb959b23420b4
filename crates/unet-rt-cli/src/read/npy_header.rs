//! The header of an NPY file: a Python dict literal such as
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`.
//!
//! ndarray-npy 0.9 keeps its header parser private, so this is a small one
//! of our own for the literals numpy writes (and `ast.literal_eval` reads):
//! strings, integers (with Python 2's `L` suffix), `True`, `False`, `None`,
//! tuples, lists and dicts. Nesting is bounded, so a hostile header cannot
//! exhaust the stack, and numbers are checked, never wrapped.

/// The deepest nesting accepted. Supported headers nest two levels
/// (`{... (shape)}`); structured types a few more, enough to parse them and
/// report them as unsupported.
const MAX_DEPTH: usize = 8;

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// The type descriptor when it is a string (`<f8`); `None` for
    /// structured types (a list).
    pub descr: Option<String>,
    /// The descriptor as written, for messages.
    pub descr_text: String,
    /// Column-major data.
    pub fortran_order: bool,
    /// The shape; every entry fits a `usize`.
    pub shape: Vec<usize>,
}

/// Parses the header text (after the length field).
pub(super) fn parse_header(text: &str) -> Result<Header, String> {
    let mut parser = Parser { text, at: 0 };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at < text.len() {
        return Err(format!(
            "unexpected text after the header dict at byte {}",
            parser.at
        ));
    }
    let Literal::Dict(items) = value else {
        return Err("the header is not a dict".to_owned());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        match key {
            Literal::Str(key) if key == "descr" => descr = Some(value),
            Literal::Str(key) if key == "fortran_order" => fortran = Some(value),
            Literal::Str(key) if key == "shape" => shape = Some(value),
            other => return Err(format!("unexpected key {} in the header", other.show())),
        }
    }
    let descr = descr.ok_or("the header has no 'descr'")?;
    let fortran_order = match fortran.ok_or("the header has no 'fortran_order'")? {
        Literal::Bool(b) => b,
        other => {
            return Err(format!(
                "'fortran_order' is {}, not True or False",
                other.show()
            ))
        }
    };
    let shape = match shape.ok_or("the header has no 'shape'")? {
        Literal::Tuple(dims) => dims.iter().map(dimension).collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("'shape' is {}, not a tuple", other.show())),
    };
    let descr_text = descr.show();
    let descr = match descr {
        Literal::Str(s) => Some(s),
        _ => None,
    };
    Ok(Header {
        descr,
        descr_text,
        fortran_order,
        shape,
    })
}

/// One entry of the shape as a size.
fn dimension(value: &Literal) -> Result<usize, String> {
    match value {
        Literal::Int(digits) => digits.parse::<usize>().map_err(|_| {
            format!("the shape entry {digits} is not a size (a whole number below 2^64)")
        }),
        other => Err(format!(
            "the shape entry {} is not a whole number",
            other.show()
        )),
    }
}

/// A Python literal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    Str(String),
    /// The integer as written (sign included, `L` and `+` dropped): it may
    /// exceed every machine type.
    Int(String),
    Bool(bool),
    None,
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    Dict(Vec<(Literal, Literal)>),
}

impl Literal {
    /// The literal for messages, cut short.
    fn show(&self) -> String {
        let text = match self {
            Self::Str(s) => format!("'{s}'"),
            Self::Int(i) => i.clone(),
            Self::Bool(true) => "True".to_owned(),
            Self::Bool(false) => "False".to_owned(),
            Self::None => "None".to_owned(),
            Self::Tuple(items) => format!(
                "({})",
                items.iter().map(Self::show).collect::<Vec<_>>().join(", ")
            ),
            Self::List(items) => format!(
                "[{}]",
                items.iter().map(Self::show).collect::<Vec<_>>().join(", ")
            ),
            Self::Dict(items) => {
                format!(
                    "{{{}}}",
                    items
                        .iter()
                        .map(|(k, v)| format!("{}: {}", k.show(), v.show()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        if text.chars().count() > 80 {
            format!("{}...", text.chars().take(77).collect::<String>())
        } else {
            text
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text
            .get(self.at..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, what: &str) -> String {
        match self.peek() {
            Some(c) => format!("{what} at byte {} (found {c:?})", self.at),
            None => format!("{what} at the end of the header"),
        }
    }

    /// One literal, `depth` levels inside brackets.
    fn value(&mut self, depth: usize) -> Result<Literal, String> {
        self.skip_space();
        match self.peek() {
            Some('{' | '(' | '[') if depth >= MAX_DEPTH => Err(format!(
                "the header nests brackets more than {MAX_DEPTH} deep"
            )),
            Some('{') => self.dict(depth + 1),
            Some('(') => self.sequence(depth + 1, ')').map(|(items, comma)| {
                // `(x)` is x; `(x,)` and `()` are tuples.
                if items.len() == 1 && !comma {
                    items.into_iter().next().unwrap_or(Literal::None)
                } else {
                    Literal::Tuple(items)
                }
            }),
            Some('[') => self
                .sequence(depth + 1, ']')
                .map(|(items, _)| Literal::List(items)),
            Some(q @ ('\'' | '"')) => self.string(q),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// Items up to `close`; also whether a comma followed the last one.
    fn sequence(&mut self, depth: usize, close: char) -> Result<(Vec<Literal>, bool), String> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some(close) {
                self.bump();
                return Ok((items, true));
            }
            items.push(self.value(depth)?);
            self.skip_space();
            match self.bump() {
                Some(',') => {}
                Some(c) if c == close => return Ok((items, false)),
                _ => return Err(self.error(&format!("expected ',' or '{close}'"))),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Literal, String> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some('}') {
                self.bump();
                return Ok(Literal::Dict(items));
            }
            let key = self.value(depth)?;
            self.skip_space();
            if self.bump() != Some(':') {
                return Err(self.error("expected ':'"));
            }
            let value = self.value(depth)?;
            items.push((key, value));
            self.skip_space();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(Literal::Dict(items)),
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self, quote: char) -> Result<Literal, String> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err("a string in the header is not closed".to_owned()),
                Some(c) if c == quote => return Ok(Literal::Str(out)),
                // Escapes: the escaped character itself is close enough for
                // type descriptors (`\'` and `\\` are the ones that occur).
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(c) => out.push(c),
                    None => return Err("a string in the header is not closed".to_owned()),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn integer(&mut self) -> Result<Literal, String> {
        let mut digits = String::new();
        match self.peek() {
            Some('-') => {
                self.bump();
                digits.push('-');
            }
            Some('+') => {
                self.bump();
            }
            _ => {}
        }
        while let Some(c) = self.peek().filter(|c| c.is_ascii_digit() || *c == '_') {
            self.bump();
            if c != '_' {
                digits.push(c);
            }
        }
        if !digits.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(self.error("expected a number"));
        }
        // Python 2's long integers, as old numpy wrote shapes: `(3L, 4L)`.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.bump();
        }
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            return Err(self.error("expected a whole number"));
        }
        Ok(Literal::Int(digits))
    }

    fn word(&mut self) -> Result<Literal, String> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        match &self.text[start..self.at] {
            "True" => Ok(Literal::Bool(true)),
            "False" => Ok(Literal::Bool(false)),
            "None" => Ok(Literal::None),
            word => Err(format!("unexpected word {word:?} in the header")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_numpy_writes() {
        let h =
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }          \n")
                .unwrap();
        assert_eq!(
            h,
            Header {
                descr: Some("<f8".into()),
                descr_text: "'<f8'".into(),
                fortran_order: false,
                shape: vec![3, 4]
            }
        );
        let h =
            parse_header("{\"shape\": (5,), \"fortran_order\": True, \"descr\": \"|u1\"}").unwrap();
        assert_eq!((h.shape, h.fortran_order), (vec![5], true));
        assert_eq!(
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        assert_eq!(
            parse_header("{'descr': '<i2', 'fortran_order': False, 'shape': (2L, 3L), }")
                .unwrap()
                .shape,
            vec![2, 3]
        );
        let structured = parse_header("{'descr': [('a', '<i4'), ('b', '<f8', (2,))], 'fortran_order': False, 'shape': (2,), }").unwrap();
        assert_eq!(structured.descr, None);
        assert!(
            structured.descr_text.starts_with("[('a', '<i4')"),
            "{}",
            structured.descr_text
        );
    }

    #[test]
    fn refuses_what_is_not_a_header() {
        let err = |text: &str| parse_header(text).unwrap_err();
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 4), }")
                .contains("-1 is not a size")
        );
        assert!(err(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (36893488147419103232,), }"
        )
        .contains("not a size"));
        assert!(
            err("{'descr': '<f8', 'fortran_order': 'yes', 'shape': (3,), }")
                .contains("fortran_order")
        );
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': 'big', }")
                .contains("not a tuple")
        );
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': (3), }").contains("not a tuple")
        );
        assert!(err("{'descr': '<f8', 'fortran_order': False, }").contains("no 'shape'"));
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), 'x': 1}")
                .contains("unexpected key")
        );
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': (3.5,), }")
                .contains("whole number")
        );
        assert!(err("{'descr': '<f8'").contains("end of the header"));
        assert!(
            err("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), } x")
                .contains("unexpected text")
        );
        let deep = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': {}{}}}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert!(err(&deep).contains("nests"));
        assert!(err("[1, 2]").contains("not a dict"));
        assert!(err("").contains("expected a value"));
    }
}
