//! c10d's collectives through the binding, on real processes (Gloo over loopback): sums, broadcasts
//! and gathers checked against values each rank regenerates from the other ranks' seeds; and
//! `Rendezvous::from_env` naming each missing torchrun variable.
mod common;

use std::process::Command;
use std::time::Duration;

use alp_dist::{Backend, DistError, ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

/// The tensors rank `rank` contributes: several dtypes and shapes, one over several MB.
fn contribution(rank: usize) -> Vec<Tensor> {
    let shapes: [(Kind, &[i64]); 8] = [
        (Kind::Float, &[3, 5]),
        (Kind::Double, &[7]),
        (Kind::BFloat16, &[4, 2, 3]),
        (Kind::Half, &[9]),
        (Kind::Int64, &[6]),
        (Kind::Int, &[2, 2]),
        (Kind::Float, &[1]),
        (Kind::Float, &[1024, 1024]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, (kind, shape))| {
            tch::manual_seed((1000 * i + rank) as i64);
            match kind {
                Kind::Int64 | Kind::Int => {
                    Tensor::randint(1 << 20, *shape, (*kind, tch::Device::Cpu))
                }
                _ => Tensor::randn(*shape, (Kind::Float, tch::Device::Cpu)).to_kind(*kind),
            }
        })
        .collect()
}

/// Sums every dtype and shape in one call, with large buckets and with 4 KB ones (several
/// collectives, tensors split over buckets), each time comparing bit for bit with the sum of the
/// regenerated contributions (two ranks: one rounding, whatever the order).
fn role_all_reduce() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let world = group.world_size();
    let expected: Vec<Tensor> = (0..world)
        .map(contribution)
        .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect())
        .unwrap();
    let group = group.with_bucket_bytes(64 << 20);
    let mine = contribution(group.rank());
    group.all_reduce_sum(&mine).unwrap();
    check_equal(&mine, &expected, 0);
    let group = group.with_bucket_bytes(4096);
    let mine = contribution(group.rank());
    group.all_reduce_sum(&mine).unwrap();
    check_equal(&mine, &expected, 1);
    println!("summed {} tensors twice", expected.len());
}

fn check_equal(got: &[Tensor], expected: &[Tensor], round: usize) {
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.kind(), e.kind());
        assert!(
            g.equal(e),
            "round {round}, tensor {i} ({:?}) differs from the sum",
            e.kind()
        );
    }
}

/// Rank `rank`'s bytes for the gather: lengths 0, 1, 3000, ... (one empty).
fn bytes_of(rank: usize) -> Vec<u8> {
    let len = [0usize, 1, 3000, 17][rank % 4];
    (0..len).map(|i| (i * 31 + rank * 7) as u8).collect()
}

/// Broadcast from the last rank (bucketed, mixed dtypes), a gather of unequal byte buffers, and a
/// barrier.
fn role_broadcast_gather() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo)
        .unwrap()
        .with_bucket_bytes(1024);
    let (rank, world) = (group.rank(), group.world_size());
    let root = world - 1;
    let mine = contribution(rank);
    group.broadcast(&mine, root).unwrap();
    check_equal(&mine, &contribution(root), 0);
    let all = group.all_gather_bytes(&bytes_of(rank)).unwrap();
    let expected: Vec<Vec<u8>> = (0..world).map(bytes_of).collect();
    assert_eq!(all, expected);
    group.barrier().unwrap();
    println!("broadcast and gathered on rank {rank}");
}

fn all_reduce_matches_regenerated_sums() {
    let done = common::run_ranks("all_reduce", 2, 60, &[], Duration::from_secs(120));
    assert!(done
        .iter()
        .all(|f| f.stdout.contains("summed 8 tensors twice")));
}

fn broadcast_and_unequal_gather_on_three_ranks() {
    let done = common::run_ranks("broadcast_gather", 3, 60, &[], Duration::from_secs(120));
    for (r, f) in done.iter().enumerate() {
        assert!(f
            .stdout
            .contains(&format!("broadcast and gathered on rank {r}")));
    }
}

const VARS: [&str; 4] = ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];

/// Prints `Rendezvous::from_env`'s error, or `ok` with the parsed rendezvous.
fn role_from_env() {
    match Rendezvous::from_env() {
        Ok(r) => println!("ok {r:?}"),
        Err(e) => println!("error: {e}"),
    }
}

/// A process started without one of torchrun's variables gets an error naming it; with all of them
/// (LOCAL_RANK optional) the values torchrun set; a rank outside the world is refused.
fn from_env_names_the_missing_variable() {
    let run = |remove: Option<&str>, set: &[(&str, &str)]| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(common::ROLE, "from_env");
        for (k, v) in [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29555"),
        ] {
            cmd.env(k, v);
        }
        cmd.env_remove("LOCAL_RANK")
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if let Some(v) = remove {
            cmd.env_remove(v);
        }
        for (k, v) in set {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    for var in VARS {
        let out = run(Some(var), &[]);
        assert!(
            out.starts_with(&format!("error: environment variable {var} is not set")),
            "{var}: {out}"
        );
    }
    let out = run(None, &[]);
    assert!(
        out.contains(
            "rank: 1, world_size: 2, local_rank: 1, master_addr: \"10.0.0.7\", master_port: 29555"
        ),
        "{out}"
    );
    assert!(out.contains("agent_store: false"), "{out}");
    let out = run(None, &[("TORCHELASTIC_USE_AGENT_STORE", "True")]);
    assert!(out.contains("agent_store: true"), "{out}");
    let out = run(None, &[("LOCAL_RANK", "0")]);
    assert!(out.contains("local_rank: 0"), "{out}");
    let out = run(None, &[("MASTER_PORT", "http")]);
    assert!(
        out.starts_with("error: environment variable MASTER_PORT=\"http\" is invalid"),
        "{out}"
    );
    let out = run(None, &[("RANK", "2")]);
    assert!(
        out.contains("rank 2 is not below the world size 2"),
        "{out}"
    );
}

/// Refusals before any communication: a rank outside the world, a broadcast root outside it.
fn invalid_arguments_are_refused() {
    let r = Rendezvous::local(2, 2, common::free_port()).with_timeout(Duration::from_secs(1));
    let e = ProcessGroup::new(r.clone(), Backend::Gloo).unwrap_err();
    assert!(matches!(e, DistError::Rendezvous(_)), "{e}");
    let solo = ProcessGroup::new(
        Rendezvous {
            rank: 0,
            world_size: 1,
            ..r
        },
        Backend::Gloo,
    )
    .unwrap();
    let t = Tensor::from_slice(&[1.5f32, 2.0]);
    solo.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&t).unwrap(),
        vec![1.5, 2.0],
        "one rank: the sum is itself"
    );
    let e = solo.broadcast(std::slice::from_ref(&t), 1).unwrap_err();
    assert!(e.to_string().contains("root 1 is not a rank of 1"), "{e}");
    let e = solo.all_reduce_sum(&[Tensor::new()]).unwrap_err();
    assert!(e.to_string().contains("tensor 0 is undefined"), "{e}");
    let r = Rendezvous::local(0, 1, common::free_port()).with_timeout(Duration::from_secs(5));
    let nccl = ProcessGroup::new(r, Backend::Nccl);
    if !Backend::Nccl.is_available() {
        let e = nccl.unwrap_err();
        assert!(
            e.to_string().contains("NCCL is not compiled into alp-dist"),
            "{e}"
        );
    } else if !tch::Cuda::is_available() {
        // Compiled in, no GPU: c10d refuses with an error, never an abort.
        let e = nccl.unwrap_err();
        assert!(e.to_string().contains("could not join"), "{e}");
        println!("  NCCL without a GPU: {e}");
    }
}

/// The same binary under torchrun (`--no-python`, its agent hosting the store): two ranks sum as
/// when started by hand.
fn runs_under_torchrun() {
    let torchrun = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/torchrun");
    let out = Command::new(torchrun)
        .args(["--no-python", "--nnodes", "1", "--nproc-per-node", "2"])
        .args(["--master-addr", "127.0.0.1", "--master-port"])
        .arg(common::free_port().to_string())
        .arg(std::env::current_exe().unwrap())
        .env(common::ROLE, "all_reduce")
        .env(common::TIMEOUT, "60")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "torchrun failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("summed 8 tensors twice").count(),
        2,
        "{stdout}"
    );
}

fn main() {
    common::main(
        &[
            (
                "all_reduce_matches_regenerated_sums",
                all_reduce_matches_regenerated_sums,
            ),
            (
                "broadcast_and_unequal_gather_on_three_ranks",
                broadcast_and_unequal_gather_on_three_ranks,
            ),
            (
                "from_env_names_the_missing_variable",
                from_env_names_the_missing_variable,
            ),
            (
                "invalid_arguments_are_refused",
                invalid_arguments_are_refused,
            ),
            ("runs_under_torchrun", runs_under_torchrun),
        ],
        &[
            ("all_reduce", role_all_reduce),
            ("broadcast_gather", role_broadcast_gather),
            ("from_env", role_from_env),
        ],
    );
}
