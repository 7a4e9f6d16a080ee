//! Generation: sampling, the streaming generator, chat templates.

pub mod sampler;
