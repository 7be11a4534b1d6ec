//! The ES update direction from the members' shaped fitness.
use tch::{Device, Kind, Tensor};

use super::factors::factors;
use super::population::{EvolvedMatrix, Population};

/// The ES gradient estimate for `matrix` (`[m, n]` f32): `g = 1 / (N sigma) sum_i f_i s_i A_i B_i^T /
/// sqrt r` over the `N = fitness.len()` members (even; members `2k`, `2k + 1` are pair `k`). Pairs
/// share factors, so it is `sum_k c_k A_k B_k^T` with `c_k = (f_2k - f_2k+1) / (N sigma sqrt r)`,
/// computed as `(diag(c) A)^T B` over the stacked pair factors in f64: no `m x n` matrix per member,
/// and a pair of equal fitness contributes exactly nothing.
pub fn es_gradient(
    population: &Population,
    matrix: &EvolvedMatrix,
    fitness: &[f64],
    device: Device,
) -> Tensor {
    let n_members = fitness.len();
    assert!(
        n_members >= 2 && n_members.is_multiple_of(2),
        "antithetic pairs need an even population, got {n_members}"
    );
    let r = population.rank;
    let norm = n_members as f64 * population.sigma * (r as f64).sqrt();
    let pairs = n_members / 2;
    let coef: Vec<f64> = (0..pairs)
        .map(|k| (fitness[2 * k] - fitness[2 * k + 1]) / norm)
        .collect();
    let (a, b): (Vec<Tensor>, Vec<Tensor>) = (0..pairs)
        .map(|k| {
            let (a, b) = factors(population.key(matrix, 2 * k), matrix.m, matrix.n, r, device);
            (a.to_kind(Kind::Double), b.to_kind(Kind::Double))
        })
        .unzip();
    let c = Tensor::from_slice(&coef)
        .to_device(device)
        .view([pairs as i64, 1, 1]);
    let p = pairs as i64;
    // [pairs, m, r] -> [m, pairs * r]: column (k, j) is c_k A_k[:, j]; likewise B without c.
    let a = (Tensor::stack(&a, 0) * c)
        .permute([1, 0, 2])
        .reshape([matrix.m, p * r]);
    let b = Tensor::stack(&b, 0)
        .permute([1, 0, 2])
        .reshape([matrix.n, p * r]);
    a.matmul(&b.tr()).to_kind(Kind::Float)
}
