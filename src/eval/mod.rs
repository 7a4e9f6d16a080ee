//! Measuring models: speed (bench); perplexity and KL divergence come with the eval issue.

pub mod bench;
