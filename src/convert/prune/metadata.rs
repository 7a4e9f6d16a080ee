//! The GGUF keys of a pruned model: block_count and the per-layer arrays of the kept blocks,
//! the FFN lengths and head counts that changed, and what was done, under `ledge.prune.*`.

use super::PrunePlan;
use crate::convert::Result;
use crate::gguf::{GgufBuilder, GgufFile, MetaArray, MetaValue, Value, ValueType};

impl PrunePlan {
    /// Writes block_count, the filtered per-layer arrays, the FFN lengths and `ledge.prune.*`.
    pub fn set_metadata(&self, f: &GgufFile, b: &mut GgufBuilder) -> Result<()> {
        let arch = &self.arch;
        let ff_key = format!("{arch}.feed_forward_length");
        let prefix = format!("{arch}.");
        for (k, v) in f.metadata() {
            if !k.starts_with(&prefix) || k == ff_key {
                continue;
            }
            if let Value::Array(a) = &v {
                if a.len() == self.n_layer_in {
                    if let MetaValue::Array(m) = v.to_owned_value() {
                        let items = self
                            .kept_layers
                            .iter()
                            .map(|&l| m.items[l].clone())
                            .collect();
                        b.set(k, MetaValue::Array(MetaArray::new(m.elem, items)))?;
                    }
                }
            }
        }
        b.set(
            &format!("{arch}.block_count"),
            MetaValue::U32(self.kept_layers.len() as u32),
        )?;
        let ff = self.n_ff_out();
        if ff.windows(2).all(|w| w[0] == w[1]) {
            b.set(&ff_key, MetaValue::U32(ff[0] as u32))?;
        } else {
            b.set(
                &ff_key,
                MetaValue::Array(MetaArray::new(
                    ValueType::U32,
                    ff.iter().map(|&v| MetaValue::U32(v as u32)).collect(),
                )),
            )?;
        }
        if self.spec.ffn_fraction.is_some() {
            b.set(
                "ledge.prune.ffn_fraction",
                MetaValue::F32(self.ffn_fraction_removed() as f32),
            )?;
            b.set("ledge.prune.ffn_scope", self.spec.scope.name())?;
            b.set("ledge.prune.refit", MetaValue::Bool(self.spec.refit))?;
        }
        if let Some(nh) = self.spec.prune_heads {
            let u32_arr = |v: Vec<usize>| {
                MetaValue::Array(MetaArray::new(
                    ValueType::U32,
                    v.into_iter().map(|x| MetaValue::U32(x as u32)).collect(),
                ))
            };
            let uniform_or_array = |v: Vec<usize>| {
                if v.windows(2).all(|w| w[0] == w[1]) {
                    MetaValue::U32(v[0] as u32)
                } else {
                    u32_arr(v)
                }
            };
            let (h, kv): (Vec<usize>, Vec<usize>) = self.heads_out().into_iter().unzip();
            b.set(&format!("{arch}.attention.head_count"), uniform_or_array(h))?;
            b.set(
                &format!("{arch}.attention.head_count_kv"),
                uniform_or_array(kv),
            )?;
            // n_embd / n_head is no longer the head size: say it.
            let (hk, hv) = self.head_dim;
            b.set(
                &format!("{arch}.attention.key_length"),
                MetaValue::U32(hk as u32),
            )?;
            b.set(
                &format!("{arch}.attention.value_length"),
                MetaValue::U32(hv as u32),
            )?;
            b.set("ledge.prune.kv_groups_removed", MetaValue::U32(nh as u32))?;
            b.set(
                "ledge.prune.removed_kv_heads",
                u32_arr(
                    self.kept_layers
                        .iter()
                        .flat_map(|&l| self.kv_removed[l].clone().unwrap_or_default())
                        .collect(),
                ),
            )?;
            b.set("ledge.prune.attn_refit", MetaValue::Bool(self.spec.refit))?;
        }
        if !self.dropped_layers.is_empty() {
            b.set(
                "ledge.prune.dropped_layers",
                MetaValue::Array(MetaArray::new(
                    ValueType::U32,
                    self.dropped_layers
                        .iter()
                        .map(|&l| MetaValue::U32(l as u32))
                        .collect(),
                )),
            )?;
        }
        if let Some(p) = &self.spec.calib_text {
            if self.spec.needs_calibration() {
                let name = p
                    .file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
                b.set("ledge.prune.calibration", name.as_str())?;
            }
        }
        Ok(())
    }
}
