//! Generation: sampling, the streaming generator, chat templates.

pub mod chat;
pub mod generator;
pub mod sampler;

pub use generator::{GenerateError, GenerateOptions, Generator, Stats, StopReason, Stream};
pub use sampler::{Sampler, SamplerConfig};
