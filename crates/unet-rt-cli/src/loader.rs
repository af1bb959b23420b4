//! Loading the model named by `--model`, or the bundled one, as the flags
//! shared by `segment` and `bench` say (device, precision, threads, tile).

use std::path::Path;

use unet_rt::{Model, ModelInfo, Precision};

use crate::args::ModelArgs;
use crate::errors::{usage, CliError};
use crate::special_files::refuse_special;

/// The name the bundled model goes by in messages and `Model::path`.
pub(crate) const BUNDLED_NAME: &str = "bundled:nuclei.pt";

/// The bundled nuclei model, embedded at build time when
/// `python/unet_rt/models/nuclei.pt` existed (see build.rs).
#[cfg(unet_rt_bundled)]
pub(crate) fn bundled_bytes() -> Option<&'static [u8]> {
    Some(include_bytes!(env!("UNET_RT_BUNDLED_MODEL_PATH")))
}

/// The bundled nuclei model: this build has none.
#[cfg(not(unet_rt_bundled))]
pub(crate) fn bundled_bytes() -> Option<&'static [u8]> {
    None
}

fn no_bundled_model() -> CliError {
    usage(
        "no bundled model was built into this unet-rt (python/unet_rt/models/nuclei.pt did not exist at \
         build time): pass --model MODEL",
    )
}

/// Loads `path`, or the bundled model when `None`, on `devices`.
pub(crate) fn load_model(
    path: Option<&Path>,
    devices: &[unet_rt::Device],
    precision: Precision,
) -> Result<Model, CliError> {
    match path {
        Some(path) => {
            // A FIFO would block the load and a device never end: refuse them
            // before the engine opens the path.
            refuse_special(path, "a model file")
                .map_err(|m| usage(format!("the model {} {m}", path.display())))?;
            let (path, devices) = (path.to_owned(), devices.to_vec());
            interruptible(move || Model::load_on_devices(&path, &devices, precision)).map_err(|e| {
                match e {
                    // A model that cannot be read (permissions, a symlink
                    // loop) is the command line's to change, as a missing
                    // one is: exit 2, named as the model (exit 1 read as
                    // "some input failed").
                    CliError::Engine(unet_rt::Error::Io { path, source }) => {
                        usage(format!("cannot load model {}: {source}", path.display()))
                    }
                    other => other,
                }
            })
        }
        None => {
            let bytes = bundled_bytes().ok_or_else(no_bundled_model)?;
            let devices = devices.to_vec();
            interruptible(move || {
                Model::load_bytes_on_devices(bytes, BUNDLED_NAME, &devices, precision)
            })
        }
    }
}

/// Runs a load on a thread of its own and returns at a signal: probing a
/// model without metadata runs whole forward passes, which cannot stop
/// early, and Ctrl-C (or SIGTERM) waited a minute for a slow one after
/// saying "stopping after the current batch". Nothing is written yet, so
/// nothing is left to clean.
fn interruptible(
    load: impl FnOnce() -> unet_rt::Result<Model> + Send + 'static,
) -> Result<Model, CliError> {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(unet_rt::LOAD_THREAD_NAME.to_owned())
        .stack_size(unet_rt::LOAD_THREAD_STACK)
        .spawn(move || {
            // Inside `catch`, a panic the core catches itself (tch's
            // panicking `CModule::to`) is recorded, not printed as a bug,
            // and one it does not is this load's error.
            let loaded = crate::panics::catch(load)
                .unwrap_or_else(|message| Err(unet_rt::Error::Internal(message)));
            let _ = done_tx.send(loaded);
        })
        .map_err(|e| {
            CliError::Engine(unet_rt::Error::Internal(format!(
                "cannot start a thread: {e}"
            )))
        })?;
    loop {
        match done_rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(loaded) => return Ok(loaded?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if crate::interrupt::requested() => {
                return Err(CliError::Interrupted)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(CliError::Engine(unet_rt::Error::Internal(
                    "the model load stopped without an answer".to_owned(),
                )))
            }
        }
    }
}

/// Applies `--threads`, parses device and precision, and loads the model.
pub(crate) fn load(args: &ModelArgs) -> Result<Model, CliError> {
    if let Some(threads) = args.threads {
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    }
    let devices = unet_rt::parse_devices(&args.device)?;
    let precision: Precision = args.precision.parse()?;
    load_model(args.model.as_deref(), &devices, precision)
}

/// `--tile` for this model: one size repeated over the spatial axes, or one
/// per axis.
pub(crate) fn tile_for(
    tile: Option<&[usize]>,
    info: &ModelInfo,
) -> Result<Option<Vec<usize>>, CliError> {
    match tile {
        None => Ok(None),
        // `--tile whole`: see `whole_for`.
        Some([]) => Ok(None),
        Some([one]) => Ok(Some(vec![*one; info.spatial_dims])),
        Some(sizes) if sizes.len() == info.spatial_dims => Ok(Some(sizes.to_vec())),
        Some(sizes) => Err(usage(format!(
            "--tile has {} sizes for a {}-D model",
            sizes.len(),
            info.spatial_dims
        ))),
    }
}

/// Whether `--tile whole` asked for one tile covering each image.
pub(crate) fn whole_for(tile: Option<&[usize]>) -> bool {
    tile.is_some_and(<[usize]>::is_empty)
}

/// The batch size flag as the engine takes it.
pub(crate) fn batch_size(args: &ModelArgs) -> Option<usize> {
    args.batch_size
        .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
}
