fn main() {
    let p = std::env::args().nth(1).unwrap();
    let f = ledge::gguf::GgufFile::open(&p).unwrap();
    let m = ledge::model::Model::load(&f).unwrap();
    let mut c = m.new_cache(64);
    let ids = [2u32, 818, 5279, 529, 7001, 563];
    let l = m.forward(&mut c, &ids, ledge::model::Logits::All).unwrap();
    let nv = m.config.n_vocab;
    for p in 0..ids.len() {
        let row = &l[p * nv..(p + 1) * nv];
        let mut idx: Vec<usize> = (0..nv).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        println!(
            "{p} {:?} {:?}",
            idx[..4]
                .iter()
                .map(|&i| (row[i] * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            &idx[..4]
        );
    }
}
