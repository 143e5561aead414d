//! Original Stable Diffusion (CompVis/LDM) single-file key names → the
//! diffusers/transformers names our modules ask for.
#![forbid(unsafe_code)]

/// Splits `"a.b.rest"` after `n` dot-separated parts.
fn split_parts(s: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = s;
    for _ in 0..n {
        let (head, tail) = rest.split_once('.')?;
        parts.push(head);
        rest = tail;
    }
    Some((parts, rest))
}

/// ldm ResBlock parameter names → diffusers `ResnetBlock2D` names.
fn map_resnet(rest: &str) -> String {
    for (old, new) in [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
        ("nin_shortcut.", "conv_shortcut."),
    ] {
        if let Some(tail) = rest.strip_prefix(old) {
            return format!("{new}{tail}");
        }
    }
    rest.to_string()
}

/// An original SD UNet key (after `model.diffusion_model.`) → diffusers name.
pub(super) fn map_ldm_unet(k: &str, layers_per_block: i64) -> Option<String> {
    let per = (layers_per_block + 1) as usize;
    for (old, new) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        // SGM (SDXL): the text-time embedding.
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ] {
        if let Some(tail) = k.strip_prefix(old) {
            return Some(format!("{new}{tail}"));
        }
    }
    if let Some(rest) = k.strip_prefix("input_blocks.") {
        let (p, tail) = split_parts(rest, 2)?;
        let i: usize = p[0].parse().ok()?;
        let sub: usize = p[1].parse().ok()?;
        if i == 0 {
            return None;
        }
        let block = (i - 1) / per;
        let layer = (i - 1) % per;
        return Some(if layer + 1 == per {
            let tail = tail.strip_prefix("op.")?;
            format!("down_blocks.{block}.downsamplers.0.conv.{tail}")
        } else if sub == 0 {
            format!("down_blocks.{block}.resnets.{layer}.{}", map_resnet(tail))
        } else {
            format!("down_blocks.{block}.attentions.{layer}.{tail}")
        });
    }
    if let Some(rest) = k.strip_prefix("middle_block.") {
        let (p, tail) = split_parts(rest, 1)?;
        return Some(match p[0] {
            "0" => format!("mid_block.resnets.0.{}", map_resnet(tail)),
            "1" => format!("mid_block.attentions.0.{tail}"),
            "2" => format!("mid_block.resnets.1.{}", map_resnet(tail)),
            _ => return None,
        });
    }
    if let Some(rest) = k.strip_prefix("output_blocks.") {
        let (p, tail) = split_parts(rest, 2)?;
        let i: usize = p[0].parse().ok()?;
        let sub: usize = p[1].parse().ok()?;
        let (block, layer) = (i / per, i % per);
        return Some(match (sub, tail.strip_prefix("conv.")) {
            (0, _) => format!("up_blocks.{block}.resnets.{layer}.{}", map_resnet(tail)),
            (1 | 2, Some(conv)) => format!("up_blocks.{block}.upsamplers.0.conv.{conv}"),
            (1, None) => format!("up_blocks.{block}.attentions.{layer}.{tail}"),
            _ => return None,
        });
    }
    None
}

/// An original SD VAE key (after `first_stage_model.`) → diffusers name.
/// Both halves: the encoder's `down.{i}` keep their order, the decoder's
/// `up.{i}` are numbered from the bottom (`up_blocks.{levels - 1 - i}`).
pub(super) fn map_ldm_vae(k: &str, levels: i64) -> Option<String> {
    for conv in ["quant_conv.", "post_quant_conv."] {
        if let Some(tail) = k.strip_prefix(conv) {
            return Some(format!("{conv}{tail}"));
        }
    }
    let (half, rest) = k.split_once('.')?;
    if half != "encoder" && half != "decoder" {
        return None;
    }
    for (old, new) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
    ] {
        if let Some(tail) = rest.strip_prefix(old) {
            return Some(format!("{half}.{new}{tail}"));
        }
    }
    if let Some(tail) = rest.strip_prefix("mid.block_1.") {
        return Some(format!("{half}.mid_block.resnets.0.{}", map_resnet(tail)));
    }
    if let Some(tail) = rest.strip_prefix("mid.block_2.") {
        return Some(format!("{half}.mid_block.resnets.1.{}", map_resnet(tail)));
    }
    if let Some(tail) = rest.strip_prefix("mid.attn_1.") {
        for (old, new) in [
            ("norm.", "group_norm."),
            ("q.", "to_q."),
            ("k.", "to_k."),
            ("v.", "to_v."),
            ("proj_out.", "to_out.0."),
        ] {
            if let Some(t) = tail.strip_prefix(old) {
                return Some(format!("{half}.mid_block.attentions.0.{new}{t}"));
            }
        }
        return None;
    }
    let (blocks, sampler, resampler, reversed) = match half {
        "encoder" => ("down", "downsample.conv.", "downsamplers", false),
        _ => ("up", "upsample.conv.", "upsamplers", true),
    };
    let level = rest.strip_prefix(blocks)?.strip_prefix('.')?;
    let (p, tail) = split_parts(level, 1)?;
    let i: i64 = p[0].parse().ok()?;
    let block = if reversed { levels - 1 - i } else { i };
    if !(0..levels).contains(&block) {
        return None;
    }
    if let Some(t) = tail.strip_prefix(sampler) {
        return Some(format!(
            "{half}.{blocks}_blocks.{block}.{resampler}.0.conv.{t}"
        ));
    }
    let (q, t) = split_parts(tail.strip_prefix("block.")?, 1)?;
    Some(format!(
        "{half}.{blocks}_blocks.{block}.resnets.{}.{}",
        q[0],
        map_resnet(t)
    ))
}

/// Where SD 2.x single files keep the OpenCLIP text tower.
pub(super) const SD2_OPENCLIP: &str = "cond_stage_model.model.";
/// Where SDXL (SGM) single files keep the OpenCLIP bigG tower.
pub(super) const SDXL_OPENCLIP: &str = "conditioner.embedders.1.model.";
/// Where SDXL single files keep the CLIP ViT-L tower.
pub(super) const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";

/// An OpenCLIP text tower key under `prefix` → transformers names
/// (`text_projection`, a `[width, proj]` matrix, is stored transposed:
/// the caller marks it with `Weights::transposed`).
pub(super) fn map_openclip(k: &str, prefix: &str) -> Vec<(String, Option<(i64, i64)>)> {
    let Some(rest) = k.strip_prefix(prefix) else {
        return Vec::new();
    };
    let one = |s: String| vec![(s, None)];
    match rest {
        "token_embedding.weight" => return one("embeddings.token_embedding.weight".into()),
        "positional_embedding" => return one("embeddings.position_embedding.weight".into()),
        "text_projection" => return one("text_projection.weight".into()),
        _ => {}
    }
    if let Some(t) = rest.strip_prefix("ln_final.") {
        return one(format!("final_layer_norm.{t}"));
    }
    let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((p, tail)) = split_parts(block, 1) else {
        return Vec::new();
    };
    let layer = format!("encoder.layers.{}", p[0]);
    for (which, suffix) in [
        ("attn.in_proj_weight", "weight"),
        ("attn.in_proj_bias", "bias"),
    ] {
        if tail == which {
            return ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(i, proj)| {
                    (
                        format!("{layer}.self_attn.{proj}.{suffix}"),
                        Some((i as i64, 3)),
                    )
                })
                .collect();
        }
    }
    for (old, new) in [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ] {
        if let Some(t) = tail.strip_prefix(old) {
            return one(format!("{layer}.{new}{t}"));
        }
    }
    Vec::new()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unet_names() {
        let m = |k| map_ldm_unet(k, 2);
        assert_eq!(
            m("input_blocks.1.0.in_layers.2.weight").as_deref(),
            Some("down_blocks.0.resnets.0.conv1.weight")
        );
        assert_eq!(
            m("input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight").as_deref(),
            Some("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight")
        );
        assert_eq!(
            m("input_blocks.3.0.op.bias").as_deref(),
            Some("down_blocks.0.downsamplers.0.conv.bias")
        );
        assert_eq!(
            m("input_blocks.4.0.skip_connection.weight").as_deref(),
            Some("down_blocks.1.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            m("middle_block.1.proj_in.weight").as_deref(),
            Some("mid_block.attentions.0.proj_in.weight")
        );
        assert_eq!(
            m("output_blocks.2.1.conv.weight").as_deref(),
            Some("up_blocks.0.upsamplers.0.conv.weight")
        );
        assert_eq!(
            m("output_blocks.5.2.conv.bias").as_deref(),
            Some("up_blocks.1.upsamplers.0.conv.bias")
        );
        assert_eq!(
            m("output_blocks.4.1.norm.weight").as_deref(),
            Some("up_blocks.1.attentions.1.norm.weight")
        );
        assert_eq!(
            m("output_blocks.11.0.emb_layers.1.weight").as_deref(),
            Some("up_blocks.3.resnets.2.time_emb_proj.weight")
        );
        assert_eq!(
            m("time_embed.2.bias").as_deref(),
            Some("time_embedding.linear_2.bias")
        );
    }

    #[test]
    fn vae_names() {
        let m = |k| map_ldm_vae(k, 4);
        assert_eq!(
            m("decoder.up.3.block.0.conv1.weight").as_deref(),
            Some("decoder.up_blocks.0.resnets.0.conv1.weight")
        );
        assert_eq!(
            m("decoder.up.0.block.0.nin_shortcut.weight").as_deref(),
            Some("decoder.up_blocks.3.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            m("decoder.up.1.upsample.conv.weight").as_deref(),
            Some("decoder.up_blocks.2.upsamplers.0.conv.weight")
        );
        assert_eq!(
            m("decoder.mid.attn_1.q.weight").as_deref(),
            Some("decoder.mid_block.attentions.0.to_q.weight")
        );
        assert_eq!(
            m("decoder.norm_out.bias").as_deref(),
            Some("decoder.conv_norm_out.bias")
        );
        assert_eq!(
            m("encoder.conv_in.weight").as_deref(),
            Some("encoder.conv_in.weight")
        );
        assert_eq!(
            m("encoder.down.0.block.1.nin_shortcut.bias").as_deref(),
            Some("encoder.down_blocks.0.resnets.1.conv_shortcut.bias")
        );
        assert_eq!(
            m("encoder.down.2.downsample.conv.weight").as_deref(),
            Some("encoder.down_blocks.2.downsamplers.0.conv.weight")
        );
        assert_eq!(
            m("encoder.mid.attn_1.proj_out.weight").as_deref(),
            Some("encoder.mid_block.attentions.0.to_out.0.weight")
        );
        assert_eq!(
            m("encoder.norm_out.weight").as_deref(),
            Some("encoder.conv_norm_out.weight")
        );
        assert_eq!(m("quant_conv.weight").as_deref(), Some("quant_conv.weight"));
        assert_eq!(m("decoder.up.4.block.0.conv1.weight"), None);
        assert_eq!(m("encoder.down.4.block.0.conv1.weight"), None);
        assert_eq!(m("loss.logvar"), None);
    }

    #[test]
    fn openclip_names() {
        let v = map_openclip(
            "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight",
            SD2_OPENCLIP,
        );
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].0, "encoder.layers.3.self_attn.k_proj.weight");
        assert_eq!(v[1].1, Some((1, 3)));
        assert_eq!(
            map_openclip("cond_stage_model.model.positional_embedding", SD2_OPENCLIP)[0].0,
            "embeddings.position_embedding.weight"
        );
        assert_eq!(
            map_openclip(
                "conditioner.embedders.1.model.text_projection",
                SDXL_OPENCLIP
            )[0]
            .0,
            "text_projection.weight"
        );
        assert!(
            map_openclip("conditioner.embedders.1.model.ln_final.bias", SD2_OPENCLIP).is_empty()
        );
        assert_eq!(
            map_ldm_unet("label_emb.0.2.weight", 2).as_deref(),
            Some("add_embedding.linear_2.weight")
        );
    }
}
