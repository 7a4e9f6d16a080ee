//! Training on CPU for distillation (issue 17): the hand-written backward passes (`grad`),
//! each tested against finite differences and PyTorch autograd; the student model that chains
//! them (`student`); its dense kernel (`kernels`); the optimizer (`optim`); teacher labels
//! (`labels`); checkpoints (`checkpoint`) and the merged output (`merge`).

pub mod checkpoint;
pub mod curve;
pub mod grad;
pub mod kernels;
pub mod labels;
pub mod merge;
pub mod optim;
pub mod student;
