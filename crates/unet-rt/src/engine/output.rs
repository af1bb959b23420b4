//! What the engine writes: element types and the reduction of network output.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::metadata::Activation;

/// What to compute from the network's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// One class index per pixel: argmax of softmax models, the thresholded
    /// mask (logit > 0, or probability > 0.5) of one-channel models. Shape:
    /// spatial axes.
    #[default]
    Labels,
    /// Softmax or sigmoid probabilities, channel-first: `(classes, spatial...)`.
    Probabilities,
    /// The network's output as it is, channel-first.
    Raw,
    /// Objects, read out of the labels by the model's read-out
    /// ([`Segmenter::read_out`](crate::Segmenter::read_out): the components,
    /// face connectivity, of its seed classes, grown over its grow classes,
    /// holes filled and objects under `min_size` removed as it says; by
    /// default every class but 0 as seeds, nothing else), numbered `1..=N`
    /// in raster order of their first pixel, as `uint32` (or
    /// `uint64`/`int64`). Shape: spatial axes. Not with a window (an object
    /// crossing the window's edge would be read out of part of itself).
    Instances,
}

/// The element a result is written in when the caller does not choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NaturalElement {
    /// Labels of up to 256 classes.
    U8,
    /// Labels of more classes.
    U16,
    /// Instance ids.
    U32,
    /// Probabilities and raw values.
    F32,
}

impl NaturalElement {
    /// The NumPy name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::U16 => "uint16",
            Self::U32 => "uint32",
            Self::F32 => "float32",
        }
    }
}

impl OutputMode {
    /// The name of each mode, as every entry point spells it.
    pub const NAMES: [&'static str; 4] = ["labels", "probabilities", "raw", "instances"];

    /// The element of results of a model with `out_channels` channels:
    /// labels in the narrowest type that holds every class.
    pub fn natural_element(self, out_channels: usize) -> NaturalElement {
        match self {
            Self::Instances => NaturalElement::U32,
            Self::Labels if out_channels > 256 => NaturalElement::U16,
            Self::Labels => NaturalElement::U8,
            Self::Probabilities | Self::Raw => NaturalElement::F32,
        }
    }

    /// What the mode's results are written as, said where an `out` array
    /// of another dtype is refused ("labels are written as uint8 or
    /// uint16"): one sentence per mode, for every entry point.
    pub fn written_as(self) -> String {
        match self {
            Self::Labels => "labels are written as uint8 or uint16".to_owned(),
            Self::Instances => {
                "instance ids are written as uint32, uint64 or int64 (narrower types would wrap them)"
                    .to_owned()
            }
            Self::Probabilities | Self::Raw => {
                format!("{} output is written as float32 or float16", self.name())
            }
        }
    }

    /// The shape of one image's result for `spatial` pixels: the spatial
    /// shape, channel-first with `out_channels` for per-class outputs.
    pub fn result_shape(self, out_channels: usize, spatial: &[usize]) -> Vec<usize> {
        match self.is_spatial() {
            true => spatial.to_vec(),
            false => std::iter::once(out_channels)
                .chain(spatial.iter().copied())
                .collect(),
        }
    }

    /// The mode's name, as [`OutputMode::NAMES`] spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Labels => Self::NAMES[0],
            Self::Probabilities => Self::NAMES[1],
            Self::Raw => Self::NAMES[2],
            Self::Instances => Self::NAMES[3],
        }
    }

    /// Whether the result has the spatial shape alone (no channel axis).
    pub fn is_spatial(self) -> bool {
        matches!(self, Self::Labels | Self::Instances)
    }
}

impl std::str::FromStr for OutputMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "labels" => Ok(Self::Labels),
            "probabilities" | "probs" => Ok(Self::Probabilities),
            "raw" => Ok(Self::Raw),
            "instances" => Ok(Self::Instances),
            _ => Err(Error::InvalidArgument {
                argument: "output",
                message: format!(
                    "unknown output {s:?}; expected \"labels\", \"probabilities\", \"raw\" or \"instances\""
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

impl NonFinite {
    /// The name of each policy, as every entry point spells it.
    pub const NAMES: [&'static str; 2] = ["raise", "propagate"];
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
    /// True for the types instance ids are written in (wide enough never
    /// to wrap).
    const IS_ID: bool = false;
    /// True for a floating type whose range is narrower than `f32`'s: a
    /// finite network output can become infinite when written in it.
    const NARROWS: bool = false;
    /// Whether a written value is finite (true for every integer type).
    fn is_finite(self) -> bool {
        true
    }
    /// Converts an instance id (only called when `IS_ID`).
    fn from_id(id: u32) -> Self;
    /// Converts the device's element.
    fn from_raw(raw: Self::Raw) -> Self;
    /// Converts a blended value (a class index for label types).
    fn from_f32(value: f32) -> Self;
    /// Converts a class index (only called for label types, with classes
    /// that fit).
    fn from_class(class: u16) -> Self {
        Self::from_f32(f32::from(class))
    }
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
    fn from_class(class: u16) -> Self {
        class as u8
    }
    fn from_id(id: u32) -> Self {
        id as u8
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
    fn from_class(class: u16) -> Self {
        class
    }
    fn from_id(id: u32) -> Self {
        id as u16
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
    fn from_id(id: u32) -> Self {
        id as f32
    }
}

impl OutputElement for half::f16 {
    type Raw = half::f16;
    const NAME: &'static str = "float16";
    const IS_LABEL: bool = false;
    const NARROWS: bool = true;
    fn is_finite(self) -> bool {
        half::f16::is_finite(self)
    }
    fn from_raw(raw: half::f16) -> Self {
        raw
    }
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
    fn from_id(id: u32) -> Self {
        half::f16::from_f32(id as f32)
    }
}

/// Instance ids: never written by the device (the engine labels first and
/// numbers the components on the host), so `Raw` is only nominal.
macro_rules! id_element {
    ($($t:ty => $raw:ty, $name:literal);*) => {$(
        impl OutputElement for $t {
            type Raw = $raw;
            const NAME: &'static str = $name;
            const IS_LABEL: bool = false;
            const IS_ID: bool = true;
            fn from_raw(raw: $raw) -> Self {
                raw as $t
            }
            fn from_f32(value: f32) -> Self {
                value as $t
            }
            fn from_id(id: u32) -> Self {
                <$t>::from(id)
            }
        }
    )*};
}
id_element!(u32 => i32, "uint32"; u64 => i64, "uint64"; i64 => i64, "int64");

/// Checks that `mode` makes sense for the model's output and the element type.
pub(crate) fn check_mode<U: OutputElement>(
    mode: OutputMode,
    kind: Activation,
    channels: usize,
) -> Result<()> {
    let invalid = |message: String| Error::InvalidArgument {
        argument: "output",
        message,
    };
    // A result type that does not suit the output is the `out` array's
    // dtype (the natural type is chosen when there is none).
    let wrong_type = |wanted: &str| Error::InvalidArgument {
        argument: "out",
        message: format!("has dtype {}; {wanted}", U::NAME),
    };
    match mode {
        OutputMode::Instances => {
            check_mode::<u16>(OutputMode::Labels, kind, channels)?;
            if !U::IS_ID {
                return Err(wrong_type(&mode.written_as()));
            }
        }
        OutputMode::Labels => {
            if let Some((reason, instead)) = kind.no_labels(channels) {
                return Err(invalid(format!("{reason}: ask for {instead} output")));
            }
            if !U::IS_LABEL {
                return Err(wrong_type(&mode.written_as()));
            }
            if channels > U::MAX_LABEL + 1 {
                return Err(wrong_type(&format!(
                    "{channels} classes do not fit in it: use uint16"
                )));
            }
        }
        OutputMode::Probabilities | OutputMode::Raw => {
            if mode == OutputMode::Probabilities && kind == Activation::Identity {
                return Err(invalid(
                    "the model's output is \"identity\" (regression): ask for raw output"
                        .to_owned(),
                ));
            }
            if U::IS_LABEL || U::IS_ID {
                return Err(wrong_type(&mode.written_as()));
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
    kind: Activation,
) -> Result<Tensor> {
    let target = <U::Raw as tch::kind::Element>::KIND;
    let channels = y
        .size()
        .get(1)
        .and_then(|&c| usize::try_from(c).ok())
        .unwrap_or(0);
    let reduced = match (mode, kind.mask_threshold(channels)) {
        (OutputMode::Labels | OutputMode::Instances, Some(threshold)) => y
            .f_gt(f64::from(threshold))
            .and_then(|m| m.f_squeeze_dim(1)),
        (OutputMode::Labels | OutputMode::Instances, None) => argmax_channels(y),
        (OutputMode::Probabilities, _) => match kind {
            Activation::Sigmoid => y.f_to_kind(Kind::Float).and_then(|t| t.f_sigmoid()),
            Activation::Probabilities | Activation::Masks => y.f_to_kind(Kind::Float),
            _ => y.f_softmax(1, Kind::Float),
        },
        (OutputMode::Raw, _) => Ok(y.shallow_clone()),
    };
    reduced
        .and_then(|t| t.f_to_kind(target))
        .map_err(Error::inference)
}

/// `y.argmax(1)` (the first largest channel; a NaN counts as largest, the
/// first NaN wins) from elementwise comparisons, one per channel. libtorch's
/// argmax over the channel axis of an `(N, C, spatial...)` tensor is a
/// strided reduction: 23 ms for one 2-class 512x512 tile on this CPU, against
/// 0.1 ms for the comparison, which made labels several times slower than
/// probabilities with a cheap network.
fn argmax_channels(y: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
    let channels = y.size().get(1).copied().unwrap_or(0);
    if channels <= 1 {
        return y.f_argmax(1, false);
    }
    let mut best = y.f_select(1, 0)?;
    let mut best_nan = best.f_isnan()?;
    let mut index = best.f_zeros_like()?.f_to_kind(Kind::Int64)?;
    for c in 1..channels {
        let value = y.f_select(1, c)?;
        let value_nan = value.f_isnan()?;
        // Wins when larger, or when it is the first NaN.
        let wins = value
            .f_gt_tensor(&best)?
            .f_logical_or(&value_nan.f_logical_and(&best_nan.f_logical_not()?)?)?;
        index = index.f_masked_fill(&wins, c)?;
        best = value.f_where_self(&wins, &best)?;
        best_nan = best_nan.f_logical_or(&value_nan)?;
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_argmax_is_libtorchs_with_ties_and_nan() {
        let opts = (Kind::Float, tch::Device::Cpu);
        for channels in 1..=5i64 {
            // Few distinct values: many ties.
            let y = Tensor::randint(3, [2, channels, 7, 9], opts);
            let mut flat = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
            for i in (0..flat.len()).step_by(11) {
                flat[i] = f32::NAN;
            }
            let y = Tensor::from_slice(&flat).view([2, channels, 7, 9]);
            // Channels-last strides, as the engine's batches have.
            let last = y.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            for t in [y.shallow_clone(), last] {
                let want = t.argmax(1, false);
                let got = argmax_channels(&t).unwrap();
                assert!(got.equal(&want), "{channels} channels");
            }
            let volume = Tensor::randn([1, channels, 3, 4, 5], opts);
            assert!(argmax_channels(&volume)
                .unwrap()
                .equal(&volume.argmax(1, false)));
        }
    }

    #[test]
    fn natural_elements_and_result_shapes() {
        assert_eq!(OutputMode::Labels.natural_element(2), NaturalElement::U8);
        assert_eq!(OutputMode::Labels.natural_element(256), NaturalElement::U8);
        assert_eq!(OutputMode::Labels.natural_element(257), NaturalElement::U16);
        assert_eq!(OutputMode::Instances.natural_element(300).name(), "uint32");
        assert_eq!(OutputMode::Raw.natural_element(3).name(), "float32");
        assert_eq!(OutputMode::Instances.result_shape(3, &[4, 5]), vec![4, 5]);
        assert_eq!(
            OutputMode::Probabilities.result_shape(3, &[4, 5]),
            vec![3, 4, 5]
        );
        for name in OutputMode::NAMES {
            assert!(name.parse::<OutputMode>().is_ok(), "{name}");
        }
        for name in NonFinite::NAMES {
            assert!(name.parse::<NonFinite>().is_ok(), "{name}");
        }
    }
}
