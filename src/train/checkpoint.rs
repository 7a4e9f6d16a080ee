//! Training checkpoints: the trainable parameters, AdamW's moments and step, and the run's
//! settings, in a GGUF file (`general.type = "ledge.distill.checkpoint"`), written to a
//! temporary name and renamed, so an interruption never leaves half a checkpoint.

use std::path::{Path, PathBuf};

use super::optim::AdamW;
use crate::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, MetaValue};

const TYPE: &str = "ledge.distill.checkpoint";

/// What a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The run's settings as JSON: a resumed run must be the same run.
    pub settings: String,
    pub params: Vec<f32>,
    pub opt: AdamW,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    pub fn write(&self, path: &Path) -> Result<PathBuf, GgufError> {
        let mut b = GgufBuilder::new();
        b.set("general.type", TYPE)?;
        b.set("ledge.distill.settings", self.settings.as_str())?;
        b.set("ledge.distill.step", MetaValue::U64(self.opt.step as u64))?;
        let n = self.params.len() as u64;
        for name in ["params", "adam_m", "adam_v"] {
            b.add_tensor(name, GgmlType::F32, &[n])?;
        }
        let mut s = b.create(path)?;
        for v in [&self.params, &self.opt.m, &self.opt.v] {
            s.write_tensor(&f32_bytes(v))?;
        }
        s.finish()
    }

    pub fn read(path: &Path) -> Result<Checkpoint, String> {
        let f = GgufFile::open(path).map_err(|e| e.to_string())?;
        if f.get_str("general.type").ok() != Some(TYPE) {
            return Err("not a ledge distill checkpoint".into());
        }
        let settings = f
            .get_str("ledge.distill.settings")
            .map_err(|e| e.to_string())?;
        let step = f.get_u64("ledge.distill.step").map_err(|e| e.to_string())? as usize;
        let get = |name: &str| -> Result<Vec<f32>, String> {
            let t = f.tensor(name).map_err(|e| e.to_string())?;
            if t.ty != GgmlType::F32 {
                return Err(format!("tensor {name} is {}, expected F32", t.ty));
            }
            t.to_f32().map_err(|e| e.to_string())
        };
        let (params, m, v) = (get("params")?, get("adam_m")?, get("adam_v")?);
        if m.len() != params.len() || v.len() != params.len() {
            return Err("params and optimizer moments differ in length".into());
        }
        Ok(Checkpoint {
            settings: settings.to_string(),
            params,
            opt: AdamW { m, v, step },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("ledge-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("run.ckpt");
        let c = Checkpoint {
            settings: "{\"rank\":4}".into(),
            params: vec![1.0, -2.5, 3.25],
            opt: AdamW {
                m: vec![0.1, 0.2, 0.3],
                v: vec![0.01, 0.02, 0.03],
                step: 17,
            },
        };
        c.write(&p).unwrap();
        assert_eq!(Checkpoint::read(&p).unwrap(), c);
        assert!(!dir.join("run.ckpt.tmp").exists());
        let mut b = GgufBuilder::new();
        b.set("general.type", "model").unwrap();
        let q = dir.join("model.gguf");
        b.create(&q).unwrap().finish().unwrap();
        assert!(Checkpoint::read(&q)
            .unwrap_err()
            .contains("not a ledge distill checkpoint"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
