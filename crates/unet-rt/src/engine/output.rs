//! What the engine writes: element types and the reduction of network output.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::metadata::OutputKind;

/// What to compute from the network's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// One class index per pixel: argmax of softmax models, the thresholded
    /// mask (logit > 0) of one-channel sigmoid models. Shape: spatial axes.
    #[default]
    Labels,
    /// Softmax or sigmoid probabilities, channel-first: `(classes, spatial...)`.
    Probabilities,
    /// The network's output as it is, channel-first.
    Raw,
}

impl std::str::FromStr for OutputMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "labels" => Ok(Self::Labels),
            "probabilities" | "probs" => Ok(Self::Probabilities),
            "raw" => Ok(Self::Raw),
            _ => Err(Error::InvalidArgument {
                argument: "output",
                message: format!(
                    "unknown output {s:?}; expected \"labels\", \"probabilities\" or \"raw\""
                ),
            }),
        }
    }
}

/// What the engine does when the network's input or output holds NaN or
/// infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Stop with an error naming the image ([`Error::InvalidArgument`]) or
    /// the first tile whose output is not finite ([`Error::NonFinite`]).
    #[default]
    Raise,
    /// Pass such values through to the result.
    Propagate,
}

impl std::str::FromStr for NonFinite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "raise" => Ok(Self::Raise),
            "propagate" => Ok(Self::Propagate),
            _ => Err(Error::InvalidArgument {
                argument: "nonfinite",
                message: format!("unknown choice {s:?}; expected \"raise\" or \"propagate\""),
            }),
        }
    }
}

/// An element type the engine can write results in: `u8`/`u16` labels,
/// `f32`/`f16` probabilities or raw values.
pub trait OutputElement: Copy + Default + Send + Sync + 'static {
    /// The libtorch element the device produces before the final cast.
    type Raw: tch::kind::Element + Copy + Default + Send;
    /// Name for error messages.
    const NAME: &'static str;
    /// True for label types, false for floating types.
    const IS_LABEL: bool;
    /// Largest label value the type holds.
    const MAX_LABEL: usize = 0;
    /// Converts the device's element.
    fn from_raw(raw: Self::Raw) -> Self;
    /// Converts a blended value (a class index for label types).
    fn from_f32(value: f32) -> Self;
}

impl OutputElement for u8 {
    type Raw = u8;
    const NAME: &'static str = "uint8";
    const IS_LABEL: bool = true;
    const MAX_LABEL: usize = 255;
    fn from_raw(raw: u8) -> Self {
        raw
    }
    fn from_f32(value: f32) -> Self {
        value as u8
    }
}

impl OutputElement for u16 {
    // libtorch has no unsigned 16-bit tensors with copy support; labels
    // travel as int16 with the same bits.
    type Raw = i16;
    const NAME: &'static str = "uint16";
    const IS_LABEL: bool = true;
    const MAX_LABEL: usize = 65535;
    fn from_raw(raw: i16) -> Self {
        raw as u16
    }
    fn from_f32(value: f32) -> Self {
        value as u16
    }
}

impl OutputElement for f32 {
    type Raw = f32;
    const NAME: &'static str = "float32";
    const IS_LABEL: bool = false;
    fn from_raw(raw: f32) -> Self {
        raw
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl OutputElement for half::f16 {
    type Raw = half::f16;
    const NAME: &'static str = "float16";
    const IS_LABEL: bool = false;
    fn from_raw(raw: half::f16) -> Self {
        raw
    }
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
}

/// Checks that `mode` makes sense for the model's output and the element type.
pub(crate) fn check_mode<U: OutputElement>(
    mode: OutputMode,
    kind: OutputKind,
    channels: usize,
) -> Result<()> {
    let invalid = |message: String| Error::InvalidArgument {
        argument: "output",
        message,
    };
    match mode {
        OutputMode::Labels => {
            if kind == OutputKind::Identity {
                return Err(invalid(
                    "the model's output is \"identity\" (regression): ask for raw output"
                        .to_owned(),
                ));
            }
            if kind == OutputKind::Sigmoid && channels > 1 {
                return Err(invalid(format!(
                    "labels of a {channels}-channel sigmoid model are ambiguous (masks may overlap): ask for probabilities"
                )));
            }
            if !U::IS_LABEL {
                return Err(invalid(format!(
                    "labels are written as uint8 or uint16, not {}",
                    U::NAME
                )));
            }
            if channels > U::MAX_LABEL + 1 {
                return Err(invalid(format!(
                    "{channels} classes do not fit in {}: use uint16",
                    U::NAME
                )));
            }
        }
        OutputMode::Probabilities | OutputMode::Raw => {
            if mode == OutputMode::Probabilities && kind == OutputKind::Identity {
                return Err(invalid(
                    "the model's output is \"identity\" (regression): ask for raw output"
                        .to_owned(),
                ));
            }
            if U::IS_LABEL {
                return Err(invalid(format!(
                    "{mode:?} output is written as float32 or float16, not {}",
                    U::NAME
                )));
            }
        }
    }
    Ok(())
}

/// Reduces a batch of network output `(B, K, spatial...)` on its device to
/// what is written, cast to the element's kind.
pub(crate) fn reduce<U: OutputElement>(
    y: &Tensor,
    mode: OutputMode,
    kind: OutputKind,
) -> Result<Tensor> {
    let target = <U::Raw as tch::kind::Element>::KIND;
    let reduced = match (mode, kind) {
        (OutputMode::Labels, OutputKind::Sigmoid) => y.f_gt(0.0).and_then(|m| m.f_squeeze_dim(1)),
        (OutputMode::Labels, _) => y.f_argmax(1, false),
        (OutputMode::Probabilities, OutputKind::Sigmoid) => {
            y.f_to_kind(Kind::Float).and_then(|t| t.f_sigmoid())
        }
        (OutputMode::Probabilities, _) => y.f_softmax(1, Kind::Float),
        (OutputMode::Raw, _) => Ok(y.shallow_clone()),
    };
    reduced
        .and_then(|t| t.f_to_kind(target))
        .map_err(Error::inference)
}
