//! The forward hooks on the real decoder: every projection of every layer, the LM head and the
//! embedding lookup go through the hooks, once each per forward (prefill and KV-cache decode), and
//! what a hook adds is what the model uses; several hooks compose in a [`Stack`].
use std::cell::RefCell;
use std::collections::BTreeMap;

use alp_policy::hooks::Stack;
use alp_policy::{CausalLM, ForwardHooks, LinearKind, LinearSite, NoHooks, Weight};
use alp_test_support::tiny_model::{copy_of, TinyModel};
use tch::{Kind, Tensor};

fn tiny(arch: &str, tied: bool) -> CausalLM {
    TinyModel::new(arch)
        .with("vocab_size", 48)
        .with("num_hidden_layers", 3)
        .with("tie_word_embeddings", tied)
        .with("initializer_range", 0.2)
        .random(3)
}

/// Counts hook calls per site and checks each weight against the model's own parameter of that name;
/// adds no term unless `doubled` names a site, whose delta is then its own product `x W^T` (so the
/// model computes with that weight doubled).
struct Census {
    params: BTreeMap<String, Tensor>,
    linear: RefCell<BTreeMap<String, usize>>,
    embedding: RefCell<usize>,
    doubled: Option<LinearSite>,
    double_embedding: bool,
}

impl Census {
    fn new(model: &CausalLM) -> Self {
        Census {
            params: model.named_parameters().into_iter().collect(),
            linear: RefCell::new(BTreeMap::new()),
            embedding: RefCell::new(0),
            doubled: None,
            double_embedding: false,
        }
    }
}

impl ForwardHooks for Census {
    fn embedding_delta(&self, ids: &Tensor, weight: &Tensor) -> Option<Tensor> {
        *self.embedding.borrow_mut() += 1;
        assert!(weight.equal(&self.params["model.embed_tokens.weight"]));
        // An independent lookup: one-hot rows times the matrix.
        let vocab = weight.size()[0];
        self.double_embedding
            .then(|| ids.one_hot(vocab).to_kind(weight.kind()).matmul(weight))
    }

    fn linear_delta(&self, site: LinearSite, x: &Tensor, w: &Weight) -> Option<Tensor> {
        let name = site.weight_name();
        *self.linear.borrow_mut().entry(name.clone()).or_default() += 1;
        // The weight handed over is the parameter of that name (the embedding for a tied head).
        let expected = self
            .params
            .get(&name)
            .unwrap_or_else(|| &self.params["model.embed_tokens.weight"]);
        assert!(w.equal(expected), "{name}: another tensor was passed");
        (self.doubled == Some(site)).then(|| x.matmul(&w.tr()))
    }
}

/// A copy of `model` with parameter `name` doubled.
fn with_doubled(model: &CausalLM, name: &str) -> CausalLM {
    let copy = copy_of(model);
    tch::no_grad(|| {
        let mut p = copy.var_store().variables()[name].shallow_clone();
        let doubled = &p * 2.0;
        p.copy_(&doubled);
    });
    copy
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn every_projection(layers: usize) -> Vec<String> {
    let kinds = LinearKind::IN_LAYER;
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
    for (arch, tied) in [("qwen2", false), ("qwen3", true), ("llama", false)] {
        let model = tiny(arch, tied);
        let ids = Tensor::from_slice(&[5i64, 9, 13, 2, 7, 1]).view([2, 3]);
        let census = Census::new(&model);
        let hooked = tch::no_grad(|| model.forward(&ids, None, &census));
        let calls = census.linear.borrow().clone();
        assert_eq!(
            calls.keys().cloned().collect::<Vec<_>>(),
            every_projection(3),
            "{arch}"
        );
        assert!(calls.values().all(|&n| n == 1), "{arch}: {calls:?}");
        assert_eq!(*census.embedding.borrow(), 1);
        // Hooks that add nothing leave the plain model, bit for bit.
        let plain = tch::no_grad(|| model.forward(&ids, None, &NoHooks));
        assert!(
            hooked.equal(&plain),
            "{arch}: a hook without terms changed the logits"
        );

        // A KV-cache decode step goes through the same sites.
        let mut cache = model.new_cache(2, 4);
        let valid = Tensor::ones([2, 4], (Kind::Bool, tch::Device::Cpu));
        let decode = Census::new(&model);
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

        // What a hook adds is what the model computes with: a delta equal to layer 1's up projection
        // is the model with that weight doubled.
        let site = LinearSite {
            layer: Some(1),
            kind: LinearKind::Up,
        };
        let doubled = Census {
            doubled: Some(site),
            ..Census::new(&model)
        };
        let changed = tch::no_grad(|| model.forward(&ids, None, &doubled));
        assert!(max_diff(&changed, &plain) > 1e-4);
        let reference = with_doubled(&model, &site.weight_name());
        let expected = tch::no_grad(|| reference.forward(&ids, None, &NoHooks));
        let diff = max_diff(&changed, &expected);
        assert!(
            diff < 1e-5,
            "{arch}: doubled up projection differs by {diff}"
        );

        // The same for the embedding (untied models: a tied one's head would double too).
        if !tied {
            let doubled = Census {
                double_embedding: true,
                ..Census::new(&model)
            };
            let changed = tch::no_grad(|| model.forward(&ids, None, &doubled));
            let reference = with_doubled(&model, "model.embed_tokens.weight");
            let expected = tch::no_grad(|| reference.forward(&ids, None, &NoHooks));
            let diff = max_diff(&changed, &expected);
            assert!(diff < 1e-5, "{arch}: doubled embedding differs by {diff}");
        }
    }
}

/// Toy hooks for the composition rules: a constant added at one site, a layer input scaled.
struct Offset(f64);

impl ForwardHooks for Offset {
    fn linear_delta(&self, site: LinearSite, x: &Tensor, w: &Weight) -> Option<Tensor> {
        let mut shape = x.size();
        *shape.last_mut().unwrap() = w.size()[0];
        (site.kind == LinearKind::Down).then(|| Tensor::full(shape, self.0, (x.kind(), x.device())))
    }

    fn layer_input(&self, _layer: usize, h: Tensor) -> Tensor {
        h * self.0
    }

    fn logits(&self, logits: Tensor) -> Tensor {
        logits - self.0
    }
}

#[test]
fn a_stack_chains_inputs_and_logits_in_order_and_sums_the_deltas() {
    let (a, b) = (Offset(2.0), Offset(3.0));
    let stack = Stack(vec![&a, &b]);
    let x = Tensor::ones([2, 4], (Kind::Float, tch::Device::Cpu));
    let w = Tensor::ones([5, 4], (Kind::Float, tch::Device::Cpu));
    let hooks: &dyn ForwardHooks = &stack;
    let down = LinearSite {
        layer: Some(0),
        kind: LinearKind::Down,
    };
    // x W^T = 4 everywhere, plus 2 + 3.
    let y = hooks.linear(down, &x, &Weight::new(&w), None);
    assert_eq!(y.size(), [2, 5]);
    assert!(y.equal(&Tensor::full([2, 5], 9.0, (Kind::Float, tch::Device::Cpu))));
    let up = LinearSite {
        kind: LinearKind::Up,
        ..down
    };
    let y = hooks.linear(up, &x, &Weight::new(&w), None);
    assert!(y.equal(&x.matmul(&w.tr())));
    // (1 * 2) * 3, and (1 - 2) - 3.
    let h = hooks.layer_input(0, x.shallow_clone());
    assert!(h.equal(&(&x * 6.0)));
    let l = hooks.logits(x.shallow_clone());
    assert!(l.equal(&(&x - 5.0)));
}
