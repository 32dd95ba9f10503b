//! The placement policy as pure functions.

use dirk_engine::placement::{
    choose_steal, move_cost, place, CostModel, InputSite, ProcessorLoad, StealCandidate,
};
use dirk_engine::{ProcessorId, ProcessorKind, Scope, WorkerId};
use proptest::prelude::*;

fn cpu(w: u32, queued_s: f64) -> ProcessorLoad {
    ProcessorLoad {
        id: ProcessorId {
            worker: WorkerId(w),
            kind: ProcessorKind::Cpu,
        },
        queued_s,
        slots: 1,
    }
}

#[test]
fn locality_beats_load_only_when_the_move_is_big() {
    let model = CostModel::default(); // 1 GB/s
    let procs = [cpu(0, 0.010), cpu(1, 0.0)]; // worker 0 has 10 ms of queued work
    let big = [InputSite {
        owner: WorkerId(0),
        bytes: 100_000_000,
    }]; // 100 ms to move
    let small = [InputSite {
        owner: WorkerId(0),
        bytes: 1_000,
    }]; // ~50 us to move
    let any = Scope::any();
    assert_eq!(
        place(&any, &big, 0.001, &procs, &model).unwrap().worker,
        WorkerId(0)
    );
    assert_eq!(
        place(&any, &small, 0.001, &procs, &model).unwrap().worker,
        WorkerId(1)
    );
    // With nothing queued anywhere, locality decides even for a small input.
    let idle = [cpu(0, 0.0), cpu(1, 0.0)];
    assert_eq!(
        place(&any, &small, 0.001, &idle, &model).unwrap().worker,
        WorkerId(0)
    );
}

#[test]
fn load_spreads_inputless_tasks() {
    let model = CostModel::default();
    let procs = [cpu(0, 0.5), cpu(1, 0.2), cpu(2, 0.3)];
    assert_eq!(
        place(&Scope::any(), &[], 0.01, &procs, &model)
            .unwrap()
            .worker,
        WorkerId(1)
    );
}

#[test]
fn stealing_pays_only_when_the_move_is_cheap() {
    let model = CostModel::default();
    let victim = cpu(0, 0.050); // 50 ms of work queued
    let thief = cpu(1, 0.0);
    let any = Scope::any();
    let cheap = [InputSite {
        owner: WorkerId(0),
        bytes: 1_000,
    }];
    let dear = [InputSite {
        owner: WorkerId(0),
        bytes: 1_000_000_000,
    }]; // 1 s to move
    let cands = [
        StealCandidate {
            victim,
            scope: &any,
            inputs: &dear,
        },
        StealCandidate {
            victim,
            scope: &any,
            inputs: &cheap,
        },
    ];
    assert_eq!(choose_steal(&thief, &cands, &model), Some(1));
    assert_eq!(choose_steal(&thief, &cands[..1], &model), None);
    let elsewhere = Scope::worker(WorkerId(0));
    let scoped = [StealCandidate {
        victim,
        scope: &elsewhere,
        inputs: &cheap,
    }];
    assert_eq!(
        choose_steal(&thief, &scoped, &model),
        None,
        "scope is never violated"
    );
}

#[test]
fn move_cost_counts_only_remote_inputs() {
    let model = CostModel {
        bandwidth_bytes_per_s: 1e9,
        transfer_latency_s: 0.0,
        default_task_s: 0.0,
    };
    let inputs = [
        InputSite {
            owner: WorkerId(0),
            bytes: 1_000_000_000,
        },
        InputSite {
            owner: WorkerId(1),
            bytes: 500_000_000,
        },
    ];
    assert!((move_cost(&inputs, WorkerId(0), &model) - 0.5).abs() < 1e-9);
    assert!((move_cost(&inputs, WorkerId(2), &model) - 1.5).abs() < 1e-9);
}

fn kind() -> impl Strategy<Value = ProcessorKind> {
    prop_oneof![
        Just(ProcessorKind::Cpu),
        (0u32..2).prop_map(ProcessorKind::Gpu),
        (0u32..2).prop_map(ProcessorKind::Fake)
    ]
}

fn scope() -> impl Strategy<Value = Scope> {
    let leaf = prop_oneof![
        Just(Scope::any()),
        (0u32..4).prop_map(|w| Scope::worker(WorkerId(w))),
        prop::collection::vec(0u32..4, 0..3)
            .prop_map(|ws| Scope::workers(ws.into_iter().map(WorkerId))),
        kind().prop_map(Scope::processor),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| a.intersect(&b)),
            (inner.clone(), inner).prop_map(|(a, b)| a.union(&b)),
        ]
    })
}

proptest! {
    #[test]
    fn placement_never_violates_scope(
        scope in scope(),
        procs in prop::collection::vec((0u32..4, kind(), 0.0f64..1.0), 1..10),
        inputs in prop::collection::vec((0u32..4, 0u64..1_000_000_000), 0..4),
    ) {
        let model = CostModel::default();
        let loads: Vec<ProcessorLoad> = procs.iter().map(|&(w, k, q)| ProcessorLoad {
            id: ProcessorId { worker: WorkerId(w), kind: k }, queued_s: q, slots: 1,
        }).collect();
        let sites: Vec<InputSite> = inputs.iter().map(|&(w, b)| InputSite { owner: WorkerId(w), bytes: b }).collect();
        let chosen = place(&scope, &sites, 0.001, &loads, &model);
        let any_in_scope = loads.iter().any(|p| scope.contains(&p.id));
        prop_assert_eq!(chosen.is_some(), any_in_scope);
        if let Some(p) = chosen {
            prop_assert!(scope.contains(&p));
        }
    }

    #[test]
    fn intersection_and_union_agree_with_membership(a in scope(), b in scope(), w in 0u32..4, k in kind()) {
        let p = ProcessorId { worker: WorkerId(w), kind: k };
        prop_assert_eq!(a.intersect(&b).contains(&p), a.contains(&p) && b.contains(&p));
        prop_assert_eq!(a.union(&b).contains(&p), a.contains(&p) || b.contains(&p));
        if a.intersect(&b).is_empty() {
            prop_assert!(!(a.contains(&p) && b.contains(&p)));
        }
    }
}
