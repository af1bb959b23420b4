//! Taking the segmentation out of what a network's forward returns: a
//! tensor, or a dict or tuple that holds it (torchvision's segmentation
//! models return `{"out": ..., "aux": ...}`).

use tch::{IValue, Tensor};

use crate::metadata::OutputKey;

/// The dict key taken when a dict output has several tensors and no
/// `output_key` says which (torchvision's convention).
pub const DEFAULT_KEY: &str = "out";

/// What a non-tensor output is, for messages.
pub(crate) fn describe(value: &IValue) -> &'static str {
    match value {
        IValue::Tensor(_) => "a tensor",
        IValue::None => "None",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_)
        | IValue::TensorList(_)
        | IValue::DoubleList(_)
        | IValue::IntList(_)
        | IValue::BoolList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a number",
        IValue::String(_) => "a string",
        _ => "an object",
    }
}

/// The output tensor `key` names in `value`, or (without a key) the only
/// tensor, or a dict's [`DEFAULT_KEY`]. Returns the key that was used, so
/// that probing can record its choice for every later call.
///
/// # Errors
/// A message for a key that is absent or names no tensor, and for a
/// container whose tensor cannot be chosen without a key.
pub(crate) fn select(
    value: IValue,
    key: Option<&OutputKey>,
) -> Result<(Tensor, Option<OutputKey>), String> {
    let hint =
        "set output_key in the model's metadata (python -m unet_rt.export --output-key, with \
                --padding, --halo and --size-multiple for a model without metadata: probing cannot \
                choose among its outputs)";
    match (value, key) {
        (IValue::Tensor(t), None) => Ok((t, None)),
        (IValue::Tensor(_), Some(key)) => Err(format!(
            "the metadata's output_key is {key} but the forward returns a tensor, not a dict or tuple"
        )),
        (IValue::GenericDict(entries), key) => {
            let names: Vec<String> = entries
                .iter()
                .map(|(k, _)| match k {
                    IValue::String(s) => format!("{s:?}"),
                    other => describe(other).to_owned(),
                })
                .collect();
            let wanted = match key {
                Some(OutputKey::Name(name)) => Some(name.as_str()),
                Some(OutputKey::Index(i)) => {
                    return Err(format!(
                        "the metadata's output_key is the index {i} but the forward returns a dict \
                         with keys {}; give a key",
                        names.join(", ")
                    ))
                }
                None => None,
            };
            let tensors: Vec<(String, Tensor)> = entries
                .into_iter()
                .filter_map(|(k, v)| match (k, v) {
                    (IValue::String(k), IValue::Tensor(t)) => Some((k, t)),
                    _ => None,
                })
                .collect();
            let chosen = match wanted {
                Some(name) => name.to_owned(),
                None if tensors.len() == 1 => tensors[0].0.clone(),
                None if tensors.iter().any(|(k, _)| k == DEFAULT_KEY) => DEFAULT_KEY.to_owned(),
                None => {
                    return Err(format!(
                        "the forward returns a dict with keys {} and none is {DEFAULT_KEY:?}: {hint}",
                        names.join(", ")
                    ))
                }
            };
            tensors
                .into_iter()
                .find(|(k, _)| *k == chosen)
                .map(|(k, t)| (t, Some(OutputKey::Name(k))))
                .ok_or_else(|| {
                    format!(
                        "the forward returns a dict with keys {} and no tensor under {chosen:?}",
                        names.join(", ")
                    )
                })
        }
        (value @ (IValue::Tuple(_) | IValue::GenericList(_) | IValue::TensorList(_)), key) => {
            let what = describe(&value);
            let items: Vec<IValue> = match value {
                IValue::Tuple(items) | IValue::GenericList(items) => items,
                IValue::TensorList(items) => items.into_iter().map(IValue::Tensor).collect(),
                _ => Vec::new(),
            };
            let count = items.len();
            let index = match key {
                Some(OutputKey::Index(i)) => *i,
                Some(OutputKey::Name(name)) => {
                    return Err(format!(
                        "the metadata's output_key is {name:?} but the forward returns {what} of {count}; \
                         give an index"
                    ))
                }
                None => {
                    let tensors: Vec<usize> = items
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| matches!(v, IValue::Tensor(_)))
                        .map(|(i, _)| i)
                        .collect();
                    match tensors.as_slice() {
                        [only] => *only,
                        _ => {
                            return Err(format!(
                                "the forward returns {what} of {count} items, {} of them tensors: {hint}",
                                tensors.len()
                            ))
                        }
                    }
                }
            };
            match items.into_iter().nth(index) {
                Some(IValue::Tensor(t)) => Ok((t, Some(OutputKey::Index(index)))),
                Some(other) => Err(format!(
                    "item {index} of the forward's {what} is {}, not a tensor",
                    describe(&other)
                )),
                None => Err(format!(
                    "the output_key index {index} is past the end of the forward's {what} of {count}"
                )),
            }
        }
        (other, _) => Err(format!(
            "the forward returns {}, not a tensor",
            describe(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: f32) -> IValue {
        IValue::Tensor(Tensor::from_slice(&[v]))
    }

    fn value(out: (Tensor, Option<OutputKey>)) -> (f32, Option<OutputKey>) {
        (out.0.double_value(&[0]) as f32, out.1)
    }

    fn dict(entries: &[(&str, IValue)]) -> IValue {
        IValue::GenericDict(
            entries
                .iter()
                .map(|(k, v)| (IValue::String((*k).to_owned()), v.shallow_clone()))
                .collect(),
        )
    }

    trait ShallowClone {
        fn shallow_clone(&self) -> Self;
    }

    impl ShallowClone for IValue {
        fn shallow_clone(&self) -> Self {
            match self {
                IValue::Tensor(t) => IValue::Tensor(t.shallow_clone()),
                IValue::Int(i) => IValue::Int(*i),
                _ => IValue::None,
            }
        }
    }

    #[test]
    fn picks_the_only_tensor_or_the_documented_key() {
        assert_eq!(value(select(t(1.0), None).unwrap()), (1.0, None));
        let tv = dict(&[("out", t(1.0)), ("aux", t(2.0))]);
        assert_eq!(
            value(select(tv, None).unwrap()),
            (1.0, Some(OutputKey::Name("out".into())))
        );
        let one = dict(&[("logits", t(3.0)), ("n", IValue::Int(1))]);
        assert_eq!(
            value(select(one, None).unwrap()),
            (3.0, Some(OutputKey::Name("logits".into())))
        );
        let keyed = dict(&[("out", t(1.0)), ("aux", t(2.0))]);
        let aux = OutputKey::Name("aux".into());
        assert_eq!(value(select(keyed, Some(&aux)).unwrap()), (2.0, Some(aux)));
        let tuple = IValue::Tuple(vec![IValue::Int(4), t(5.0)]);
        assert_eq!(
            value(select(tuple, None).unwrap()),
            (5.0, Some(OutputKey::Index(1)))
        );
        let pair = IValue::Tuple(vec![t(6.0), t(7.0)]);
        assert_eq!(
            value(select(pair, Some(&OutputKey::Index(1))).unwrap()),
            (7.0, Some(OutputKey::Index(1)))
        );
    }

    #[test]
    fn ambiguous_or_wrong_keys_say_what_is_there() {
        let two = dict(&[("a", t(1.0)), ("b", t(2.0))]);
        let err = select(two, None).unwrap_err();
        assert!(
            err.contains("\"a\", \"b\"") && err.contains("output_key"),
            "{err}"
        );
        let err = select(IValue::Tuple(vec![t(1.0), t(2.0)]), None).unwrap_err();
        assert!(err.contains("2 of them tensors"), "{err}");
        let err = select(IValue::Tuple(vec![t(1.0)]), Some(&OutputKey::Index(3))).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
        let err = select(t(1.0), Some(&OutputKey::Name("out".into()))).unwrap_err();
        assert!(err.contains("returns a tensor"), "{err}");
        let err = select(dict(&[("out", t(1.0))]), Some(&OutputKey::Name("x".into()))).unwrap_err();
        assert!(err.contains("no tensor under \"x\""), "{err}");
        let err = select(IValue::Int(3), None).unwrap_err();
        assert!(err.contains("a number"), "{err}");
    }
}
