//! The weight-update contract: a full or subset update lands in the engine's model exactly (each
//! tensor rounded to the engine's dtype, the rest untouched), a bad update is refused with the
//! offending name and changes nothing, and the serialised form carries the same bits.
use alp_policy::CausalLM;
use alp_rollout::{GenerationBackend, LocalEngine, RolloutError, WeightPayload, WeightUpdate};
use alp_test_support::tiny_model::TinyModel;
use tch::{Kind, Tensor};

fn tiny() -> TinyModel {
    TinyModel::new("qwen2").with("initializer_range", 0.3)
}

/// Each parameter of `model` by name, as f32 copies (the expected values are computed from these).
fn params(model: &CausalLM) -> Vec<(String, Tensor)> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(Kind::Float)))
        .collect()
}

/// Shares each tensor (tch tensors are not `Clone`).
fn dup(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

fn is_layer0(name: &str) -> bool {
    name.starts_with("model.layers.0.")
}

#[test]
fn a_full_update_rounds_each_tensor_to_the_engine_dtype() {
    let source = tiny().random(2);
    let mut engine = LocalEngine::new(tiny().random_as(Kind::BFloat16, 1), 2);
    let report = engine
        .apply_update(&WeightUpdate::copy_of(&source, 4))
        .unwrap();
    assert_eq!((report.version, engine.policy_version()), (4, 4));
    for ((name, got), (_, want)) in engine
        .model()
        .named_parameters()
        .iter()
        .zip(params(&source))
    {
        assert_eq!(got.kind(), Kind::BFloat16);
        assert!(got.equal(&want.to_kind(Kind::BFloat16)), "{name}");
    }
}

#[test]
fn a_subset_update_changes_only_the_named_tensors() {
    let (before, source) = (tiny().random(1), tiny().random(2));
    let expected_old = params(&before);
    let mut engine = LocalEngine::new(before, 2);
    let subset: Vec<(String, Tensor)> = params(&source)
        .into_iter()
        .filter(|(n, _)| is_layer0(n))
        .collect();
    assert!(!subset.is_empty());
    let update = WeightUpdate {
        version: 7,
        payload: WeightPayload::Subset(subset),
    };
    engine.install(&update).unwrap();
    assert_eq!(engine.policy_version(), 7);
    let theirs = params(&source);
    for (i, (name, got)) in engine.model().named_parameters().iter().enumerate() {
        let want = if is_layer0(name) {
            &theirs[i].1
        } else {
            &expected_old[i].1
        };
        assert!(got.equal(want), "{name}");
    }
}

#[test]
fn bad_updates_are_refused_with_the_name_and_change_nothing() {
    let before = tiny().random(1);
    let expected = params(&before);
    let mut engine = LocalEngine::new(before, 2).with_version(3);
    let source = params(&tiny().random(2));
    let mut unknown = dup(&source);
    unknown.push((
        "model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros([2], tch::kind::FLOAT_CPU),
    ));
    let (name, t) = &source[0];
    let reshaped = vec![(name.clone(), t.reshape([-1]))];
    let missing = dup(&source[1..]);
    let mut twice = dup(&source[..1]);
    twice.extend(dup(&source[..1]));
    let cases = [
        (
            WeightPayload::Subset(unknown),
            "model.layers.9.mlp.up_proj.weight",
        ),
        (WeightPayload::Subset(reshaped), name.as_str()),
        (WeightPayload::Full(missing), "tensors"),
        (WeightPayload::Subset(twice), "named twice"),
    ];
    for (payload, needle) in cases {
        let update = WeightUpdate {
            version: 8,
            payload,
        };
        let err = engine.install(&update).unwrap_err();
        assert!(
            matches!(err, RolloutError::WeightUpdate { version: 8, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(needle),
            "{err} should name {needle}"
        );
        assert_eq!(engine.policy_version(), 3);
        for ((n, got), (_, want)) in engine.model().named_parameters().iter().zip(&expected) {
            assert!(got.equal(want), "{n} changed by a refused update");
        }
    }
}

#[test]
fn the_serialised_update_carries_the_same_bits() {
    let model = tiny().random(5);
    for kind in [Kind::Float, Kind::BFloat16] {
        let tensors: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_kind(kind)))
            .collect();
        for payload in [
            WeightPayload::Full(dup(&tensors)),
            WeightPayload::Subset(dup(&tensors[..3])),
        ] {
            let update = WeightUpdate {
                version: 12,
                payload,
            };
            let back = WeightUpdate::from_bytes(&update.to_bytes().unwrap()).unwrap();
            assert_eq!(back.version, 12);
            assert_eq!(back.payload_kind(), update.payload_kind());
            assert_eq!(back.tensors().len(), update.tensors().len());
            for ((n, a), (m, b)) in update.tensors().iter().zip(back.tensors()) {
                assert_eq!(n, m);
                assert_eq!((a.kind(), a.size()), (b.kind(), b.size()), "{n}");
                assert!(a.equal(b), "{n}");
            }
        }
    }
}
