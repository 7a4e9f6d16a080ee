//! Training on CPU for distillation and low-rank repair (issue 17): the hand-written
//! backward passes (`grad`), each tested against finite differences. The training loop, the
//! attention backward and `ledge distill` build on them.

pub mod grad;
