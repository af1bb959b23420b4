//! `unet-rt info`: what a model is, what it takes and how it was trained.

use std::path::Path;

use serde_json::{json, Value};
use unet_rt::{Device, Model, Normalization, Precision};

use crate::args::InfoArgs;
use crate::errors::{CliError, EXIT_OK};
use crate::loader::{self, BUNDLED_NAME};
use crate::output::stdout_line;

/// Runs the command; returns the exit status.
pub(crate) fn run(args: &InfoArgs) -> Result<u8, CliError> {
    // The CPU in fp32 describes any model; nothing runs but a probe.
    let model = loader::load_model(args.model.as_deref(), &[Device::Cpu], Precision::Fp32)?;
    let file_bytes = match args.model.as_deref() {
        Some(path) => std::fs::metadata(path).map(|m| m.len()).ok(),
        None => loader::bundled_bytes().and_then(|b| u64::try_from(b.len()).ok()),
    };
    let description = describe(&model, args.model.as_deref(), file_bytes);
    if args.json {
        stdout_line(&description.to_string());
    } else {
        for line in text(&description) {
            stdout_line(&line);
        }
    }
    Ok(EXIT_OK)
}

/// Everything known about the model, as JSON: the file and its metadata's
/// words, then the description the Python API's `Model.info` gives too.
fn describe(model: &Model, path: Option<&Path>, file_bytes: Option<u64>) -> Value {
    let meta = model.metadata();
    let mut description = json!({
        "model": path.map_or_else(|| BUNDLED_NAME.to_owned(), |p| p.display().to_string()),
        "bundled": path.is_none(),
        "file_bytes": file_bytes,
        "has_metadata": meta.is_some(),
        "name": meta.map(|m| m.name.clone()),
        "description": meta.map(|m| m.description.clone()),
        "architecture": meta.map(|m| m.architecture.clone()),
        "class_names": model.class_names(),
        "training": meta.map(|m| m.training.clone()).unwrap_or(Value::Null),
    });
    if let (Value::Object(all), Value::Object(info)) = (&mut description, model.info().describe()) {
        all.extend(info);
    }
    description
}

/// The description for people, one `label  value` row per line.
fn text(d: &Value) -> Vec<String> {
    let s = |key: &str| d[key].as_str().unwrap_or("").to_owned();
    let n = |key: &str| d[key].as_u64().unwrap_or(0);
    let mut rows: Vec<(String, String)> = Vec::new();
    let size = d["file_bytes"]
        .as_u64()
        .map(|b| format!(" ({})", human_bytes(b)))
        .unwrap_or_default();
    rows.push(("model".into(), format!("{}{size}", s("model"))));
    if d["has_metadata"].as_bool() == Some(true) {
        rows.push(("name".into(), s("name")));
        if !s("description").is_empty() {
            rows.push(("description".into(), s("description")));
        }
    }
    let arch = if s("architecture").is_empty() {
        String::new()
    } else {
        format!("{}, ", s("architecture"))
    };
    let padding = if s("padding") == "valid" {
        "valid (unpadded) convolutions"
    } else {
        "same (padded) convolutions"
    };
    rows.push((
        "architecture".into(),
        format!("{arch}{}-D, {padding}", n("spatial_dims")),
    ));
    rows.push((
        "channels".into(),
        format!(
            "{} in, {} out ({})",
            n("in_channels"),
            n("out_channels"),
            s("output")
        ),
    ));
    // A model without names has its channel indices for names: "0 0, 1 1"
    // says nothing, so the row is left out.
    let names: Vec<&str> = d["class_names"]
        .as_array()
        .map(|a| a.iter().map(|c| c.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    let classes: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i} {c}"))
        .collect();
    if names.iter().enumerate().any(|(i, c)| *c != i.to_string()) {
        rows.push(("classes".into(), classes.join(", ")));
    }
    let valid: Vec<String> = d["valid_sizes"]
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    rows.push((
        "input sizes".into(),
        if d["fixed_size"].is_null() {
            format!(
                "{} + {}k ({}, ...) per axis; images of any size are tiled, in tiles (--tile) from {} up",
                n("smallest_size"),
                n("size_multiple"),
                valid.join(", "),
                n("smallest_tile")
            )
        } else {
            format!(
                "{} only (fixed); images of any size are tiled",
                n("fixed_size")
            )
        },
    ));
    rows.push((
        "overlap".into(),
        format!("{} px per side ({})", n("overlap"), s("overlap_reason")),
    ));
    if s("padding") == "valid" {
        rows.push((
            "output".into(),
            format!(
                "each tile's output is {} px smaller than its input",
                n("output_shrink")
            ),
        ));
    }
    if !d["output_key"].is_null() {
        rows.push(("output key".into(), d["output_key"].to_string()));
    }
    let measured = match &d["measured"] {
        Value::Null => String::new(),
        m => format!(
            "; measured on a {} px probe image with the smallest tiles: {} as the whole image",
            m["probe_size"],
            unet_rt::labels_compared(
                m["label_agreement"].as_f64().unwrap_or(0.0),
                m["pixels"]
                    .as_u64()
                    .and_then(|p| usize::try_from(p).ok())
                    .unwrap_or(0)
            )
        ),
    };
    rows.push((
        "tiling".into(),
        if d["exact"].as_bool() == Some(true) {
            format!("exact: tiles reproduce the whole-image forward{measured}")
        } else {
            match d["warning"].as_str() {
                // The warning says why, with the measurement.
                Some(warning) => warning.to_owned(),
                None => format!(
                    "approximate{measured}; use --tile whole where the image fits in one pass"
                ),
            }
        },
    ));
    rows.push((
        "geometry".into(),
        if d["probed"].as_bool() == Some(true) {
            "probed (the model has no unet_rt metadata)".into()
        } else {
            "from the model's metadata".into()
        },
    ));
    rows.push((
        "normalization".into(),
        normalization_text(&d["normalization"]),
    ));
    rows.push(("instances".into(), read_out_text(&d["instances"])));
    if let Some(size) = d["object_size"].as_f64() {
        rows.push((
            "object size".into(),
            format!("{size} pixels at training (--object-size resamples to it)"),
        ));
    }
    let mut training = Vec::new();
    flatten("", &d["training"], &mut training);
    for (i, (key, value)) in training.into_iter().enumerate() {
        rows.push((
            if i == 0 {
                "training".into()
            } else {
                String::new()
            },
            format!("{key}: {value}"),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    rows.into_iter()
        .map(|(k, v)| format!("{k:width$}{v}"))
        .collect()
}

fn read_out_text(value: &Value) -> String {
    let Ok(r) = serde_json::from_value::<unet_rt::instances::ReadOut>(value.clone()) else {
        return String::new();
    };
    let classes = |c: &[u32]| c.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let mut text = if r.seed_classes.is_empty() {
        "connected components of the non-background classes".to_owned()
    } else {
        format!("components of class {}", classes(&r.seed_classes))
    };
    if r.grow > 0 && !r.grow_classes.is_empty() {
        text += &format!(
            ", grown up to {} pixels over class {}",
            r.grow,
            classes(&r.grow_classes)
        );
    }
    if r.min_size > 1 {
        text += &format!("; objects under {} pixels removed", r.min_size);
    }
    if r.fill_holes {
        text += "; holes filled";
    }
    text
}

fn normalization_text(value: &Value) -> String {
    match serde_json::from_value::<Normalization>(value.clone()) {
        Ok(Normalization::Percentile { low, high }) => {
            format!("percentiles {low} to {high} of each image mapped to 0 and 1")
        }
        Ok(Normalization::Zscore { mean, std }) => format!("(x - {mean}) / {std}"),
        Ok(Normalization::Scale { factor }) => format!("x * {factor}"),
        Ok(Normalization::None) | Err(_) => "none (pixels as they are)".to_owned(),
    }
}

/// `key.sub: value` rows of a JSON document (provenance, metrics).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, v) in map {
                flatten(&join(key), v, out);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            let items: Vec<String> = items.iter().map(scalar).collect();
            out.push((prefix.to_owned(), items.join(", ")));
        }
        Value::Array(_) => out.push((prefix.to_owned(), value.to_string())),
        v => out.push((prefix.to_owned(), scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => short_number(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `f` to four decimals, or to four significant digits where it is smaller
/// than 0.1 (a learning rate of 2e-5 printed as 0 at four decimals), in
/// exponent form below 1e-6.
fn short_number(f: f64) -> String {
    let size = f.abs();
    if !f.is_finite() || size < 1e-6 && size > 0.0 {
        return if f.is_finite() {
            format!("{f:.3e}")
        } else {
            format!("{f}")
        };
    }
    // 4 decimals from 0.1 up, up to 9 below: 10^9 scales nothing out of range.
    let decimals = if size >= 0.1 || size == 0.0 {
        4
    } else {
        3 - size.log10().floor() as i32
    };
    let scale = 10f64.powi(decimals);
    format!("{}", (f * scale).round() / scale)
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_training_provenance() {
        let mut rows = Vec::new();
        flatten(
            "",
            &json!({"data": "dsb2018", "metrics": {"ap50": 0.812345, "iou": 0.9}, "epochs": 40, "sizes": [1, 2]}),
            &mut rows,
        );
        let text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        assert!(
            text.contains(&"metrics.ap50: 0.8123".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"epochs: 40".to_owned()) && text.contains(&"sizes: 1, 2".to_owned())
        );
    }

    #[test]
    fn small_numbers_keep_four_significant_digits() {
        assert_eq!(short_number(2e-5), "0.00002");
        assert_eq!(short_number(1.234567e-7), "1.235e-7");
        assert_eq!(short_number(1.234567e-6), "0.000001235");
        assert_eq!(short_number(0.812345), "0.8123");
        assert_eq!(short_number(1234.56789), "1234.5679");
        assert_eq!(short_number(-0.0421234), "-0.04212");
        assert_eq!(short_number(0.0), "0");
    }
}
