//! Which GGML type each tensor gets.
//!
//! A target is a plain type (every matrix gets it) or a mixed recipe (sensitive tensors get
//! more bits). In every quantized target, as in llama.cpp's `llama_tensor_get_type`:
//! - 1-D tensors (norms) and mixture-of-experts routers (`ffn_gate_inp`) stay F32;
//! - `output.weight`, and `token_embd.weight` when the model ties it to the output, get Q6_K
//!   (Q8_0 when the target is Q8_0 or the row length is not a multiple of 256).
//!
//! The recipes (L = layer index, n = layer count;
//! more(L) = L < n/8 || L >= 7n/8 || (L - n/8) % 3 == 2, llama.cpp's `use_more_bits`):
//!
//! | recipe | base | attn_v                   | ffn_down                  | attn_output |
//! |--------|------|--------------------------|---------------------------|-------------|
//! | Q2_K   | Q2_K | Q4_K if GQA ≥ 4 else Q3_K | Q3_K                     | Q3_K        |
//! | Q3_K_M | Q3_K | Q5_K if L < 2 else Q4_K  | Q5_K if L < n/16 else Q4_K | Q4_K      |
//! | Q4_K_S | Q4_K | Q5_K if L < 4            | Q5_K if L < n/8           | base        |
//! | Q4_K_M | Q4_K | Q6_K if more(L)          | Q6_K if more(L)           | base        |
//! | Q5_K_M | Q5_K | Q6_K if more(L)          | Q6_K if more(L)           | base        |
//!
//! This is llama.cpp's table for dense llama-family models (Q2_K is a mix there too, so it is
//! one here: same file sizes, a fair comparison). `--tensor-type REGEX=T` overrides any of it.
//!
//! A row length that is not a multiple of a type's block falls back, as in llama.cpp:
//! Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0; IQ4_XS → IQ4_NL; and a 32-block
//! type on a row not a multiple of 32 → F16. Each fallback is reported.

use std::fmt;
use std::str::FromStr;

use crate::ggml_type::GgmlType;

use super::{ConvertError, Result};

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Q2_K,
    Q3_K_M,
    Q4_K_S,
    Q4_K_M,
    Q5_K_M,
}

/// What the user asked for: one type everywhere, or a recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Plain(GgmlType),
    Mix(Recipe),
}

/// The plain types a target may name.
const PLAIN: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::Q6_K,
    GgmlType::Q5_K,
    GgmlType::Q4_K,
    GgmlType::Q3_K,
    // As a target name, Q2_K is the recipe (matched first); as an override, the plain type.
    GgmlType::Q2_K,
    GgmlType::IQ4_NL,
];

const RECIPES: &[(Recipe, &str)] = &[
    (Recipe::Q2_K, "Q2_K"),
    (Recipe::Q3_K_M, "Q3_K_M"),
    (Recipe::Q4_K_S, "Q4_K_S"),
    (Recipe::Q4_K_M, "Q4_K_M"),
    (Recipe::Q5_K_M, "Q5_K_M"),
];

impl Recipe {
    fn base(self) -> GgmlType {
        match self {
            Recipe::Q2_K => GgmlType::Q2_K,
            Recipe::Q3_K_M => GgmlType::Q3_K,
            Recipe::Q4_K_S | Recipe::Q4_K_M => GgmlType::Q4_K,
            Recipe::Q5_K_M => GgmlType::Q5_K,
        }
    }
}

impl Target {
    /// Every name `parse` accepts, for messages.
    pub fn names() -> String {
        let mut v: Vec<String> = PLAIN.iter().map(|t| t.to_string()).collect();
        v.extend(
            RECIPES
                .iter()
                .filter(|r| r.0 != Recipe::Q2_K)
                .map(|r| r.1.to_string()),
        );
        v.join(", ")
    }

    /// The type most tensors get.
    pub fn base(self) -> GgmlType {
        match self {
            Target::Plain(t) => t,
            Target::Mix(r) => r.base(),
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for this target.
    pub fn file_type(self) -> u32 {
        match self {
            Target::Mix(Recipe::Q2_K) => 10,
            Target::Mix(Recipe::Q3_K_M) => 12,
            Target::Mix(Recipe::Q4_K_S) => 14,
            Target::Mix(Recipe::Q4_K_M) => 15,
            Target::Mix(Recipe::Q5_K_M) => 17,
            Target::Plain(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                // Q2_K and IQ4_XS are not plain targets of the converter; synthetic models
                // (`model::synth`) write them.
                GgmlType::Q2_K => 10,
                GgmlType::Q3_K => 11,
                GgmlType::Q4_K => 14,
                GgmlType::Q5_K => 16,
                GgmlType::Q6_K => 18,
                GgmlType::IQ4_NL => 25,
                GgmlType::IQ4_XS => 30,
                GgmlType::BF16 => 32,
                _ => 0,
            },
        }
    }

    fn is_float(self) -> bool {
        matches!(
            self,
            Target::Plain(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        )
    }
}

impl FromStr for Target {
    type Err = ConvertError;
    fn from_str(s: &str) -> Result<Target> {
        let up = s.to_ascii_uppercase();
        if let Some((r, _)) = RECIPES.iter().find(|(_, n)| *n == up) {
            return Ok(Target::Mix(*r));
        }
        parse_plain(&up).map(Target::Plain).ok_or_else(|| {
            ConvertError::Usage(format!(
                "unknown type {s:?}; expected one of {}",
                Target::names()
            ))
        })
    }
}

fn parse_plain(up: &str) -> Option<GgmlType> {
    PLAIN.iter().copied().find(|t| t.to_string() == up)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Plain(t) => write!(f, "{t}"),
            Target::Mix(r) => {
                let name = RECIPES.iter().find(|x| x.0 == *r).map_or("?", |x| x.1);
                f.write_str(name)
            }
        }
    }
}

/// What a tensor is, from its GGUF name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    Output,
    AttnV,
    AttnOutput,
    FfnDown,
    Other,
}

fn role(name: &str) -> (Role, Option<usize>) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok());
    let role = match name {
        "token_embd.weight" => Role::TokenEmbd,
        "output.weight" => Role::Output,
        _ if name.ends_with(".attn_v.weight") => Role::AttnV,
        _ if name.ends_with(".attn_output.weight") => Role::AttnOutput,
        _ if name.ends_with(".ffn_down.weight") => Role::FfnDown,
        _ => Role::Other,
    };
    (role, layer)
}

/// One `--tensor-type REGEX=T` rule.
#[derive(Clone, Debug)]
pub struct Override {
    pub pattern: regex::Regex,
    pub ty: GgmlType,
}

impl FromStr for Override {
    type Err = ConvertError;
    fn from_str(s: &str) -> Result<Override> {
        let (re, ty) = s.rsplit_once('=').ok_or_else(|| {
            ConvertError::Usage(format!("--tensor-type {s:?}: expected REGEX=TYPE"))
        })?;
        let pattern = regex::Regex::new(re)
            .map_err(|e| ConvertError::Usage(format!("--tensor-type {s:?}: bad regex: {e}")))?;
        let ty = parse_plain(&ty.to_ascii_uppercase()).ok_or_else(|| {
            ConvertError::Usage(format!(
                "--tensor-type {s:?}: unknown type {ty:?}; expected one of {}",
                PLAIN
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(Override { pattern, ty })
    }
}

/// llama.cpp's substitute for a 256-block type on rows its blocks do not divide: a 32-block
/// type of similar size (other types are returned as they are).
pub fn fallback_type(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        other => other,
    }
}

/// Everything the type choice depends on.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub n_layer: usize,
    /// The model has no `output.weight`: the embeddings are the output matrix.
    pub tied: bool,
    /// Query heads per KV head.
    pub n_gqa: usize,
    pub overrides: Vec<Override>,
}

/// A tensor's type and, when it is not the one the rules asked for, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    pub fallback: Option<String>,
}

impl Plan {
    /// The type of tensor `name` with ggml dims `dims` (row length first).
    pub fn choose(&self, name: &str, dims: &[u64]) -> Choice {
        let mut ty = self.rule(name, dims);
        if let Some(o) = self.overrides.iter().find(|o| o.pattern.is_match(name)) {
            ty = o.ty;
        }
        let row = dims[0];
        if row.is_multiple_of(ty.block_size() as u64) {
            return Choice { ty, fallback: None };
        }
        let mut to = fallback_type(ty);
        if !row.is_multiple_of(to.block_size() as u64) {
            to = GgmlType::F16;
        }
        Choice {
            ty: to,
            fallback: Some(format!(
                "{name}: row length {row} is not a multiple of {} (the {ty} block): using {to}",
                ty.block_size()
            )),
        }
    }

    fn rule(&self, name: &str, dims: &[u64]) -> GgmlType {
        let t = self.target;
        // Mixture-of-experts routers stay F32 in every target, as llama.cpp's converter and
        // llama-quantize keep them: n_expert rows, and the expert choice hinges on them.
        if dims.len() < 2 || name.ends_with("ffn_gate_inp.weight") {
            return GgmlType::F32;
        }
        if t.is_float() {
            return t.base();
        }
        let (role, layer) = role(name);
        if role == Role::Output || (role == Role::TokenEmbd && self.tied) {
            return if t.base() == GgmlType::Q8_0 || !dims[0].is_multiple_of(256) {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
        }
        let Target::Mix(recipe) = t else {
            return t.base();
        };
        let (i, n) = (layer.unwrap_or(0), self.n_layer.max(1));
        let more = i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        use GgmlType::*;
        match (recipe, role) {
            (Recipe::Q2_K, Role::AttnV) if self.n_gqa >= 4 => Q4_K,
            (Recipe::Q2_K, Role::AttnV | Role::FfnDown | Role::AttnOutput) => Q3_K,
            (Recipe::Q3_K_M, Role::AttnV) => {
                if i < 2 {
                    Q5_K
                } else {
                    Q4_K
                }
            }
            (Recipe::Q3_K_M, Role::FfnDown) => {
                if i < n / 16 {
                    Q5_K
                } else {
                    Q4_K
                }
            }
            (Recipe::Q3_K_M, Role::AttnOutput) => Q4_K,
            (Recipe::Q4_K_S, Role::AttnV) if i < 4 => Q5_K,
            (Recipe::Q4_K_S, Role::FfnDown) if i < n / 8 => Q5_K,
            (Recipe::Q4_K_M | Recipe::Q5_K_M, Role::AttnV | Role::FfnDown) if more => Q6_K,
            _ => recipe.base(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(t: &str, tied: bool) -> Plan {
        Plan {
            target: t.parse().unwrap(),
            n_layer: 32,
            tied,
            n_gqa: 1,
            overrides: vec![],
        }
    }

    #[test]
    fn q4_k_m_follows_the_table() {
        let p = plan("q4_k_m", false);
        let ty = |n: &str| p.choose(n, &[4096, 4096]).ty;
        // more(L) for n = 32: L < 4, L >= 28, or (L - 4) % 3 == 2.
        assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.5.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.6.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.30.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.7.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.7.attn_q.weight"), GgmlType::Q4_K);
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
        assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
        assert_eq!(
            p.choose("blk.0.attn_norm.weight", &[4096]).ty,
            GgmlType::F32
        );
        assert_eq!(
            p.choose("blk.3.ffn_gate_inp.weight", &[2048, 128]).ty,
            GgmlType::F32
        );
        let tied = plan("q4_k_m", true);
        assert_eq!(
            tied.choose("token_embd.weight", &[4096, 10]).ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            tied.choose("token_embd.weight", &[576, 10]).ty,
            GgmlType::Q8_0
        );
    }

    #[test]
    fn k_quants_fall_back_on_short_rows() {
        let p = plan("q4_k_m", false);
        let c = p.choose("blk.7.attn_q.weight", &[576, 576]);
        assert_eq!(c.ty, GgmlType::Q5_0);
        assert!(c.fallback.unwrap().contains("576"));
        assert_eq!(
            p.choose("blk.0.attn_v.weight", &[576, 192]).ty,
            GgmlType::Q8_0
        );
        let p = plan("q3_k", false);
        assert_eq!(
            p.choose("blk.1.attn_q.weight", &[576, 8]).ty,
            GgmlType::Q4_0
        );
        assert_eq!(p.choose("blk.1.attn_q.weight", &[100, 8]).ty, GgmlType::F16);
    }

    #[test]
    fn overrides_win_and_still_fall_back() {
        let mut p = plan("q4_0", false);
        p.overrides.push("ffn_(up|gate)=q6_k".parse().unwrap());
        assert_eq!(
            p.choose("blk.3.ffn_up.weight", &[4096, 8]).ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            p.choose("blk.3.ffn_up.weight", &[576, 8]).ty,
            GgmlType::Q8_0
        );
        assert_eq!(
            p.choose("blk.3.ffn_down.weight", &[4096, 8]).ty,
            GgmlType::Q4_0
        );
        assert!("nonsense".parse::<Override>().is_err());
        assert!("x=q9_9".parse::<Override>().is_err());
        assert!("q9".parse::<Target>().is_err());
    }
}
