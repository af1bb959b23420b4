//! Test-time augmentation: each batch of tiles also runs flipped (and
//! rotated), and the logits, mapped back, are averaged.
//!
//! Why tiling stays exact: valid input sizes are `offset + k * multiple` on
//! every axis, so a tile of size `t` starting at `a` (a multiple of the
//! multiple) in a padded input of size `n` starts at `n - a - t`, again a
//! multiple, in the flipped (or, for the other axis, rotated) input. Each
//! transformed tile is therefore a tile of the transformed whole input on
//! its pooling grid, and the average over tiles equals the average of the
//! whole-input forwards: `mean_g g⁻¹ f(g(X))`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Which transforms test-time augmentation averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tta {
    /// One forward pass per tile.
    #[default]
    None,
    /// Every combination of flips of the spatial axes: 4 passes in 2-D, 8 in
    /// 3-D.
    Flips,
    /// The 8 symmetries of the square in the `(y, x)` plane (quarter turns,
    /// with and without a flip); `z` untouched in 3-D.
    D4,
}

impl Tta {
    /// The name of each mode, as every entry point spells it.
    pub const NAMES: [&'static str; 3] = ["none", "flips", "d4"];

    /// Forward passes per tile.
    pub fn passes(self, spatial_dims: usize) -> usize {
        self.transforms(spatial_dims).len()
    }

    /// The transforms, the identity first, in the fixed order the average
    /// sums them.
    fn transforms(self, spatial_dims: usize) -> Vec<Transform> {
        let first = 2i64; // tensors are (N, C, spatial...)
        let axes: Vec<i64> = (first..first + spatial_dims as i64).collect();
        match self {
            Self::None => vec![Transform::default()],
            Self::Flips => (0u32..1 << axes.len())
                .map(|mask| Transform {
                    flips: axes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, &a)| a)
                        .collect(),
                    turns: 0,
                })
                .collect(),
            Self::D4 => {
                let x = first + spatial_dims as i64 - 1;
                (0..8)
                    .map(|k| Transform {
                        flips: if k >= 4 { vec![x] } else { Vec::new() },
                        turns: k % 4,
                    })
                    .collect()
            }
        }
    }
}

impl std::str::FromStr for Tta {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "flips" => Ok(Self::Flips),
            "d4" => Ok(Self::D4),
            _ => Err(Error::InvalidArgument {
                argument: "tta",
                message: format!(
                    "unknown augmentation {s:?}; expected \"none\", \"flips\" or \"d4\""
                ),
            }),
        }
    }
}

/// Flips of some axes, then quarter turns in the plane of the last two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Transform {
    flips: Vec<i64>,
    turns: i64,
}

impl Transform {
    fn plane(x: &Tensor) -> [i64; 2] {
        let d = x.dim() as i64;
        [d - 2, d - 1]
    }

    fn apply(&self, x: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        let flipped = match self.flips.is_empty() {
            true => x.shallow_clone(),
            false => x.f_flip(self.flips.as_slice())?,
        };
        match self.turns {
            0 => Ok(flipped),
            k => flipped.f_rot90(k, Self::plane(x)),
        }
    }

    fn invert(&self, y: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        let turned = match self.turns {
            0 => y.shallow_clone(),
            k => y.f_rot90(-k, Self::plane(y))?,
        };
        match self.flips.is_empty() {
            true => Ok(turned),
            false => turned.f_flip(self.flips.as_slice()),
        }
    }
}

/// `forward(input)` averaged over the transforms of `tta` (in float32; the
/// network's own output kind without augmentation).
pub(super) fn augmented(
    tta: Tta,
    spatial_dims: usize,
    input: &Tensor,
    mut forward: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let transforms = tta.transforms(spatial_dims);
    if transforms.len() == 1 {
        return forward(input);
    }
    let count = transforms.len() as f64;
    let mut sum: Option<Tensor> = None;
    // The identity passes `input` itself, the others copies: it runs last,
    // so that a network which changes its input in place (`x.div_(255)`)
    // cannot change what the other transforms are cut from.
    let (identity, others) = transforms
        .split_first()
        .ok_or_else(|| Error::Inference("no augmentation ran".to_owned()))?;
    for transform in others.iter().chain(std::iter::once(identity)) {
        let x = transform.apply(input).map_err(Error::inference)?;
        let y = forward(&x)?;
        let y = transform
            .invert(&y)
            .and_then(|y| y.f_to_kind(Kind::Float))
            .map_err(Error::inference)?;
        sum = Some(match sum {
            None => y,
            Some(s) => s.f_add(&y).map_err(Error::inference)?,
        });
    }
    let sum = sum.ok_or_else(|| Error::Inference("no augmentation ran".to_owned()))?;
    sum.f_div_scalar(count).map_err(Error::inference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_have_their_sizes_and_start_with_the_identity() {
        assert_eq!(Tta::None.passes(2), 1);
        assert_eq!(Tta::Flips.passes(2), 4);
        assert_eq!(Tta::Flips.passes(3), 8);
        assert_eq!(Tta::D4.passes(2), 8);
        assert_eq!(Tta::D4.passes(3), 8);
        for tta in [Tta::Flips, Tta::D4] {
            assert_eq!(tta.transforms(2)[0], Transform::default());
        }
        assert!("D4".parse::<Tta>().is_ok());
        let err = "rot".parse::<Tta>().unwrap_err().to_string();
        assert!(
            err.contains("invalid tta") && err.contains("\"d4\""),
            "{err}"
        );
    }

    #[test]
    fn each_transform_is_undone_by_its_inverse_on_non_square_inputs() {
        let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, tch::Device::Cpu)).view([2, 3, 4, 5]);
        for tta in [Tta::Flips, Tta::D4] {
            for t in tta.transforms(2) {
                let there = t.apply(&x).unwrap();
                let back = t.invert(&there).unwrap();
                assert!(back.equal(&x), "{t:?}");
            }
        }
        // The distinct images of an asymmetric input: the groups' orders.
        let square = Tensor::arange(16, (Kind::Float, tch::Device::Cpu)).view([1, 1, 4, 4]);
        let mut seen: Vec<Vec<f32>> = Vec::new();
        for t in Tta::D4.transforms(2) {
            let v: Vec<f32> = Vec::try_from(t.apply(&square).unwrap().flatten(0, -1)).unwrap();
            assert!(!seen.contains(&v));
            seen.push(v);
        }
    }

    #[test]
    fn an_equivariant_map_is_unchanged_by_the_average() {
        // Doubling commutes with every transform: the average is the map.
        let x = Tensor::randn([2, 1, 6, 10], (Kind::Float, tch::Device::Cpu));
        for tta in [Tta::None, Tta::Flips, Tta::D4] {
            let y = augmented(tta, 2, &x, |t| Ok(t * 2.0)).unwrap();
            assert!(y.allclose(&(&x * 2.0), 1e-6, 1e-6, false), "{tta:?}");
        }
        // A map that is not (a left shift of columns) is averaged.
        let shift = |t: &Tensor| Ok(t.roll([1], [3]));
        let y = augmented(Tta::Flips, 2, &x, shift).unwrap();
        assert!(!y.allclose(&x.roll([1], [3]), 1e-6, 1e-6, false));
    }
}
