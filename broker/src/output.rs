//! Checks the worker's pixels against the request and encodes them as PNG,
//! with an AUTOMATIC1111-style `parameters` text chunk.
#![forbid(unsafe_code)]

use weave_common::worker_proto::WorkerGenerateParams;

use crate::supervisor::{Image, Preview};

/// Why the worker's output cannot be delivered. Any of these means the
/// worker misbehaved: the scheduler treats it as a crash.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the worker returned {got} images for a batch of {want}")]
    WrongCount { got: usize, want: u32 },
    #[error(
        "the worker returned an image of {got_w}x{got_h}, the job asked for {want_w}x{want_h}"
    )]
    WrongSize {
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
    #[error("the worker returned {got} bytes of pixels, {want} expected")]
    WrongLength { got: usize, want: usize },
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Checks count, dimensions and buffer length of every image.
pub fn check_images(job: &WorkerGenerateParams, images: &[Image]) -> Result<(), OutputError> {
    if images.len() != job.batch as usize {
        return Err(OutputError::WrongCount {
            got: images.len(),
            want: job.batch,
        });
    }
    for image in images {
        if image.width != job.width || image.height != job.height {
            return Err(OutputError::WrongSize {
                got_w: image.width,
                got_h: image.height,
                want_w: job.width,
                want_h: job.height,
            });
        }
        let want = job.width as usize * job.height as usize * 3;
        if image.rgb.len() != want {
            return Err(OutputError::WrongLength {
                got: image.rgb.len(),
                want,
            });
        }
    }
    Ok(())
}

/// The A1111 `parameters` text for image `seed`. `lora_hashes` are the
/// job's LoRAs' `(id, short hash)` ([`weave_common::pin::lora_short_hash`]),
/// written as A1111's `Lora hashes: "id: hash, …"`; their weights follow
/// as `Lora weights: "id: w, …"` (A1111 keeps them in `<lora:id:w>` prompt
/// tags, which weave prompts do not use).
pub fn parameters_text(
    job: &WorkerGenerateParams,
    seed: u64,
    lora_hashes: &[(String, String)],
) -> String {
    let mut text = job.prompt.clone();
    if !job.negative_prompt.is_empty() {
        text.push_str("\nNegative prompt: ");
        text.push_str(&job.negative_prompt);
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        job.steps,
        job.scheduler.a1111_name(),
        job.guidance,
        seed,
        job.width,
        job.height,
        job.model_id
    ));
    // A1111 writes the requested steps and, for img2img and inpainting,
    // the strength after the model.
    if let Some(image) = &job.image {
        text.push_str(&format!(", Denoising strength: {}", image.strength));
    }
    if !lora_hashes.is_empty() {
        let list = |items: Vec<String>| items.join(", ");
        text.push_str(&format!(
            ", Lora hashes: \"{}\", Lora weights: \"{}\"",
            list(
                lora_hashes
                    .iter()
                    .map(|(id, hash)| format!("{id}: {hash}"))
                    .collect()
            ),
            list(
                job.loras
                    .iter()
                    .map(|l| format!("{}: {}", l.id, l.weight))
                    .collect()
            ),
        ));
    }
    text
}

/// Encodes one checked preview: plain 8-bit RGB, no text chunk (the
/// final image carries the parameters), fast compression (previews are
/// small and frequent).
pub fn encode_preview_png(preview: &Preview) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(preview.rgb.len() / 2 + 128);
    {
        let mut encoder = png::Encoder::new(&mut out, preview.width, preview.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&preview.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The A1111 short hashes of the LoRA files jobs use, each kept while its
/// file keeps its size and modification time: the hash reads the whole file,
/// which would otherwise happen again for every job that uses it.
#[derive(Debug, Default)]
pub struct LoraHashes {
    known: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (FileStamp, String)>>,
}

/// What tells a changed file: its length and modification time.
type FileStamp = (u64, Option<std::time::SystemTime>);

impl LoraHashes {
    /// `(id, short hash)` of each LoRA of `job`, from the configured files;
    /// a file that cannot be read is left out (the worker refuses it then,
    /// and the job fails before an image is encoded).
    pub fn of(
        &self,
        job: &WorkerGenerateParams,
        config: &weave_common::config::Config,
    ) -> Vec<(String, String)> {
        job.loras
            .iter()
            .filter_map(|lora| {
                let hash = self.hash(&config.lora(&lora.id)?.path)?;
                Some((lora.id.clone(), hash))
            })
            .collect()
    }

    fn hash(&self, path: &std::path::Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.len(), meta.modified().ok());
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, hash)) = known.get(path) {
            if *seen == stamp {
                return Some(hash.clone());
            }
        }
        let hash = weave_common::pin::lora_short_hash(path).ok()?;
        known.insert(path.to_owned(), (stamp, hash.clone()));
        Some(hash)
    }
}

/// Encodes one checked image.
pub fn encode_png(
    job: &WorkerGenerateParams,
    image: &Image,
    seed: u64,
    with_parameters: bool,
    lora_hashes: &[(String, String)],
) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(image.rgb.len() / 2 + 1024);
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if with_parameters {
            // tEXt is Latin-1; A1111 readers also accept iTXt, which keeps
            // any UTF-8 prompt intact.
            let text = parameters_text(job, seed, lora_hashes);
            if text.is_ascii() {
                encoder.add_text_chunk("parameters".to_owned(), text)?;
            } else {
                encoder.add_itxt_chunk("parameters".to_owned(), text)?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weave_common::proto::Scheduler;

    fn job() -> WorkerGenerateParams {
        WorkerGenerateParams {
            model_id: "digits".into(),
            prompt: "a 7".into(),
            negative_prompt: "blurry".into(),
            width: 8,
            height: 16,
            steps: 12,
            guidance: 7.5,
            seed: 42,
            scheduler: Scheduler::EulerAncestral,
            batch: 1,
            max_prompt_chunks: 8,
            image: None,
            preview_every: 0,
            preview_max_size: 0,
            loras: Vec::new(),
        }
    }

    fn image(width: u32, height: u32, len: usize) -> Image {
        Image {
            width,
            height,
            rgb: (0..len).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn bad_output_is_refused() {
        let job = job();
        assert!(check_images(&job, &[image(8, 16, 384)]).is_ok());
        assert!(matches!(
            check_images(&job, &[image(16, 8, 384)]),
            Err(OutputError::WrongSize { .. })
        ));
        assert!(matches!(
            check_images(&job, &[image(8, 16, 383)]),
            Err(OutputError::WrongLength { .. })
        ));
        assert!(matches!(
            check_images(&job, &[]),
            Err(OutputError::WrongCount { .. })
        ));
    }

    #[test]
    fn png_round_trips_with_parameters() {
        let job = job();
        let raw = image(8, 16, 384);
        let bytes = encode_png(&job, &raw, 42, true, &[]).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (8, 16));
        assert_eq!(&buf[..info.buffer_size()], &raw.rgb[..]);
        let text = &reader.info().uncompressed_latin1_text[0];
        assert_eq!(text.keyword, "parameters");
        assert_eq!(
            text.text,
            "a 7\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, CFG scale: 7.5, \
             Seed: 42, Size: 8x16, Model: digits"
        );
        let plain = encode_png(&job, &raw, 42, false, &[]).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&plain))
            .read_info()
            .unwrap();
        assert!(reader.info().uncompressed_latin1_text.is_empty());
    }

    #[test]
    fn img2img_parameters_name_the_strength() {
        let job = WorkerGenerateParams {
            negative_prompt: String::new(),
            image: Some(weave_common::worker_proto::WorkerImageInput {
                init_png: vec![1, 2, 3],
                mask_png: None,
                strength: 0.35,
            }),
            ..job()
        };
        assert_eq!(
            parameters_text(&job, 42, &[]),
            "a 7\nSteps: 12, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 8x16, \
             Model: digits, Denoising strength: 0.35"
        );
    }

    #[test]
    fn lora_hashes_and_weights_follow_the_a1111_fields() {
        let mut job = job();
        job.loras = vec![
            weave_common::worker_proto::WorkerLora {
                id: "bold".into(),
                weight: 0.75,
            },
            weave_common::worker_proto::WorkerLora {
                id: "ink".into(),
                weight: -1.0,
            },
        ];
        let hashes = vec![
            ("bold".to_owned(), "0123456789ab".to_owned()),
            ("ink".to_owned(), "ba9876543210".to_owned()),
        ];
        let text = parameters_text(&job, 42, &hashes);
        assert!(
            text.ends_with(
                "Model: digits, Lora hashes: \"bold: 0123456789ab, ink: ba9876543210\", \
                 Lora weights: \"bold: 0.75, ink: -1\""
            ),
            "{text}"
        );
        assert!(
            text.starts_with("a 7\n"),
            "the prompt stays as given: {text}"
        );
    }

    #[test]
    fn lora_hashes_are_kept_until_the_file_changes() {
        use std::time::{Duration, SystemTime};
        let dir = std::env::temp_dir().join(format!("weave-lora-hashes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.safetensors");
        // A safetensors-shaped file: an 8-byte header length, the header, data.
        let file = |data: &[u8]| {
            let mut bytes = 2u64.to_le_bytes().to_vec();
            bytes.extend_from_slice(b"{}");
            bytes.extend_from_slice(data);
            bytes
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let write = |data: &[u8]| {
            std::fs::write(&path, file(data)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let cache = LoraHashes::default();
        write(b"aaaa");
        let first = cache.hash(&path).unwrap();
        assert_eq!(first, weave_common::pin::lora_short_hash(&path).unwrap());
        // Same length and time: the kept hash, the file is not read again.
        write(b"bbbb");
        assert_eq!(cache.hash(&path).unwrap(), first);
        // Another length: hashed anew.
        write(b"bbbbb");
        let changed = cache.hash(&path).unwrap();
        assert_ne!(changed, first);
        assert_eq!(changed, weave_common::pin::lora_short_hash(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(cache.hash(&path).is_none());
    }
}
