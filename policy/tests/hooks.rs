//! The forward hooks on the real decoder: every projection of every layer, the LM head and the
//! embedding lookup go through the hooks, once each per forward (prefill and KV-cache decode), and
//! what a hook returns is what the model uses.
use std::cell::RefCell;
use std::collections::BTreeMap;

use alp_policy::{CausalLM, ForwardHooks, LinearKind, LinearSite, NoHooks, Weight};
use alp_test_support::tiny_model::TinyModel;
use tch::{Kind, Tensor};

fn tiny(arch: &str, tied: bool) -> CausalLM {
    TinyModel::new(arch)
        .with("vocab_size", 48)
        .with("num_hidden_layers", 3)
        .with("tie_word_embeddings", tied)
        .with("initializer_range", 0.2)
        .random(3)
}

/// Counts hook calls per site and checks each weight against the model's own parameter of that name.
struct Census<'a> {
    params: BTreeMap<String, Tensor>,
    linear: RefCell<BTreeMap<String, usize>>,
    embedding: RefCell<usize>,
    /// Scales the output of this one site (to check that the model uses what the hook returns).
    scale: Option<(LinearSite, f64)>,
    _model: &'a CausalLM,
}

impl<'a> Census<'a> {
    fn new(model: &'a CausalLM, scale: Option<(LinearSite, f64)>) -> Self {
        Census {
            params: model.named_parameters().into_iter().collect(),
            linear: RefCell::new(BTreeMap::new()),
            embedding: RefCell::new(0),
            scale,
            _model: model,
        }
    }
}

impl ForwardHooks for Census<'_> {
    fn embedding(&self, ids: &Tensor, weight: &Tensor) -> Tensor {
        *self.embedding.borrow_mut() += 1;
        assert!(weight.equal(&self.params["model.embed_tokens.weight"]));
        // An independent lookup: one-hot rows times the matrix.
        let vocab = weight.size()[0];
        ids.one_hot(vocab).to_kind(weight.kind()).matmul(weight)
    }

    fn linear(&self, site: LinearSite, x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Tensor {
        let name = site.weight_name();
        *self.linear.borrow_mut().entry(name.clone()).or_default() += 1;
        // The weight handed over is the parameter of that name (the embedding for a tied head).
        let expected = self
            .params
            .get(&name)
            .unwrap_or_else(|| &self.params["model.embed_tokens.weight"]);
        assert!(w.equal(expected), "{name}: another tensor was passed");
        let y = x.matmul(&w.tr());
        let y = match b {
            Some(b) => y + b,
            None => y,
        };
        match self.scale {
            Some((s, k)) if s == site => y * k,
            _ => y,
        }
    }
}

fn every_projection(layers: usize) -> Vec<String> {
    let kinds = [
        LinearKind::Query,
        LinearKind::Key,
        LinearKind::Value,
        LinearKind::Output,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];
    let mut names: Vec<String> = (0..layers)
        .flat_map(|l| {
            kinds.iter().map(move |&kind| {
                LinearSite {
                    layer: Some(l),
                    kind,
                }
                .weight_name()
            })
        })
        .collect();
    names.push("lm_head.weight".into());
    names.sort();
    names
}

#[test]
fn every_projection_and_the_embedding_go_through_the_hooks() {
    let _ = Kind::Float;
    for (arch, tied) in [("qwen2", false), ("qwen3", true), ("llama", false)] {
        let model = tiny(arch, tied);
        let ids = Tensor::from_slice(&[5i64, 9, 13, 2, 7, 1]).view([2, 3]);
        let census = Census::new(&model, None);
        let hooked = tch::no_grad(|| model.forward(&ids, None, &census));
        let calls = census.linear.borrow().clone();
        assert_eq!(
            calls.keys().cloned().collect::<Vec<_>>(),
            every_projection(3),
            "{arch}"
        );
        assert!(calls.values().all(|&n| n == 1), "{arch}: {calls:?}");
        assert_eq!(*census.embedding.borrow(), 1);
        // The independent matmuls and one-hot lookup reproduce the plain model.
        let plain = tch::no_grad(|| model.forward(&ids, None, &NoHooks));
        let diff = (&hooked - &plain).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{arch}: hooked forward differs by {diff}");

        // A KV-cache decode step goes through the same sites.
        let mut cache = model.new_cache(2, 4);
        let valid = Tensor::ones([2, 4], (Kind::Bool, tch::Device::Cpu));
        let decode = Census::new(&model, None);
        let _ = tch::no_grad(|| {
            let _ = model.forward_cached(
                &ids,
                &alp_policy::positions_from_mask(&valid.narrow(1, 0, 3)),
                &valid.narrow(1, 0, 3),
                &mut cache,
                &NoHooks,
            );
            let h = model.forward_cached(
                &Tensor::from_slice(&[3i64, 4]).view([2, 1]),
                &Tensor::from_slice(&[3i64, 3]).view([2, 1]),
                &valid,
                &mut cache,
                &decode,
            );
            model.logits(&h, &decode)
        });
        assert_eq!(
            decode.linear.borrow().keys().cloned().collect::<Vec<_>>(),
            every_projection(3)
        );
        assert_eq!(*decode.embedding.borrow(), 1);

        // What a hook returns is what the model computes with: doubling one layer's up projection
        // changes the logits.
        let site = LinearSite {
            layer: Some(1),
            kind: LinearKind::Up,
        };
        let scaled = Census::new(&model, Some((site, 2.0)));
        let changed = tch::no_grad(|| model.forward(&ids, None, &scaled));
        assert!((&changed - &plain).abs().max().double_value(&[]) > 1e-4);
    }
}
