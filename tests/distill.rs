//! Distillation's student: its forward equals the model's own, and its backward (every op
//! chained through the blocks) equals finite differences of its loss, on the tiny llama
//! (plain), qwen2 (q/k/v biases) and qwen3 (q/k norms) fixtures.

mod common;

use std::path::PathBuf;

use common::Rng;
use ledge::gguf::GgufFile;
use ledge::model::{KvType, Logits, Model};
use ledge::train::grad::Target;
use ledge::train::student::{Loss, Student, TrainSpec, TARGETS};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
        .join(format!("{family}.f32.gguf"))
}

fn spec() -> TrainSpec {
    TrainSpec {
        rank: 4,
        alpha: 8.0,
        targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        norms: true,
    }
}

fn tokens(n_vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| (r.next_u64() % n_vocab as u64) as u32)
        .collect()
}

#[test]
fn student_forward_is_the_models_forward() {
    for fam in ["llama", "qwen2", "qwen3"] {
        let f = GgufFile::open(fixture(fam)).unwrap();
        let model = Model::load(&f).unwrap();
        let st = Student::new(&model, &f, spec()).unwrap();
        let p = st.init_params(1);
        let toks = tokens(model.config.n_vocab, 12, 7);
        let z = st.logits(&p, &toks).unwrap();
        let mut cache = model.new_cache_typed(16, KvType::F32);
        let want = model.forward(&mut cache, &toks, Logits::All).unwrap();
        let range = want.iter().cloned().fold(f32::MIN, f32::max)
            - want.iter().cloned().fold(f32::MAX, f32::min);
        let d = z
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4 * range,
            "{fam}: student logits off by {d} (range {range})"
        );
    }
}

/// Random teacher targets: each position's top 5 of a random distribution, the rest as the
/// bucket, and a next token.
fn targets(n_vocab: usize, n: usize, seed: u64) -> Vec<(Vec<u32>, Vec<f32>, f64, u32)> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..5)
                .map(|_| (r.next_u64() % n_vocab as u64) as u32)
                .collect();
            let mut ids = ids;
            ids.sort();
            ids.dedup();
            let w: Vec<f64> = ids
                .iter()
                .map(|_| 1.0 + (r.next_u64() % 100) as f64)
                .collect();
            let total: f64 = w.iter().sum::<f64>() * 1.25;
            let logp = w.iter().map(|v| (v / total).ln() as f32).collect();
            let next = (r.next_u64() % n_vocab as u64) as u32;
            (ids, logp, 0.2, next)
        })
        .collect()
}

#[test]
fn student_backward_equals_finite_differences() {
    for fam in ["llama", "qwen2", "qwen3"] {
        let f = GgufFile::open(fixture(fam)).unwrap();
        let model = Model::load(&f).unwrap();
        let st = Student::new(&model, &f, spec()).unwrap();
        let nv = model.config.n_vocab;
        let mut p = st.init_params(3);
        // B away from zero so every path carries gradient.
        let mut r = Rng(11);
        for slots in &st.layout.lora {
            for at in slots.iter().flatten() {
                for v in &mut p[at.b..at.b + at.m * at.rank] {
                    *v = ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
                }
            }
        }
        let n = 9;
        let toks = tokens(nv, n, 5);
        let tg = targets(nv, n, 9);
        let tgs: Vec<Option<Target>> = tg
            .iter()
            .enumerate()
            .map(|(i, (ids, logp, tail, next))| {
                (i != 4).then_some(Target {
                    ids,
                    logp,
                    tail: *tail,
                    next: *next,
                })
            })
            .collect();
        let lo = Loss {
            temperature: 2.0,
            alpha: 0.7,
            weight: 1.0,
        };
        let loss = |p: &[f32]| -> f64 {
            let mut g = vec![0f32; p.len()];
            st.step(p, &toks, &tgs, lo, &mut g).unwrap()
        };
        let mut g = vec![0f32; p.len()];
        st.step(&p, &toks, &tgs, lo, &mut g).unwrap();
        // Directional derivatives along random directions within each group of parameters.
        let mut groups: Vec<(String, Vec<std::ops::Range<usize>>)> = Vec::new();
        for (slot, name) in TARGETS.iter().enumerate() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for slots in &st.layout.lora {
                let at = slots[slot].unwrap();
                a.push(at.a..at.a + at.rank * at.k);
                b.push(at.b..at.b + at.m * at.rank);
            }
            groups.push((format!("{name} A"), a));
            groups.push((format!("{name} B"), b));
        }
        let norms: Vec<_> = st.layout.norms.iter().flatten().collect();
        let d = model.config.n_embd;
        groups.push((
            "attn_norm".into(),
            norms.iter().map(|x| x.0..x.0 + d).collect(),
        ));
        groups.push((
            "ffn_norm".into(),
            norms.iter().map(|x| x.1..x.1 + d).collect(),
        ));
        let o = st.layout.output_norm.unwrap();
        groups.push(("output_norm".into(), std::iter::once(o..o + d).collect()));
        for (name, ranges) in groups {
            let mut dir = vec![0f32; p.len()];
            for rg in &ranges {
                for v in &mut dir[rg.clone()] {
                    *v = (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
            }
            let analytic: f64 = g.iter().zip(&dir).map(|(&a, &b)| a as f64 * b as f64).sum();
            let eps = 1e-2f32;
            let shifted =
                |s: f32| -> Vec<f32> { p.iter().zip(&dir).map(|(&a, &b)| a + s * b).collect() };
            let numeric = (loss(&shifted(eps)) - loss(&shifted(-eps))) / (2.0 * eps as f64);
            // Relative, with a floor for the near-zero directions where f32 noise in the loss dominates.
            let err = (analytic - numeric).abs() / numeric.abs().max(0.1);
            eprintln!(
                "{fam} {name}: {analytic:.6} {numeric:.6} {:.3}%",
                err * 100.0
            );
            assert!(
                err < 2e-2 || std::env::var("SHOWALL").is_ok(),
                "{fam} {name}: analytic {analytic:.6} numeric {numeric:.6} ({:.2}%)",
                err * 100.0
            );
        }
    }
}
