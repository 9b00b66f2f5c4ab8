//! Decisions per second of the evaluator on a realistic 200-rule policy.
//!
//! `cargo bench -p warden-policy --bench decisions`; criterion prints throughput in
//! elements (decisions) per second for each request mix.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warden_policy::{ModbusRequest, RateState, Request, Source, compile, evaluate};

/// 4 bridges × 10 units × 5 rules = 200 rules: per unit, holding and input register
/// reads for the poll schedule, coil reads for the facade, a rate-limited cloud
/// setpoint block and facade coil writes.
fn policy_source() -> String {
    let mut out = String::new();
    for bridge in 0..4 {
        for unit in 1..=10 {
            out.push_str(&format!(
                "[[modbus]]\nbridge = \"line{bridge}\"\nunits = {unit}\nfunctions = [\"read_holding_registers\"]\naddresses = [\"0..=99\", \"200..=249\"]\nsources = [\"poll\", \"facade\"]\n\n\
                 [[modbus]]\nbridge = \"line{bridge}\"\nunits = {unit}\nfunctions = [\"read_input_registers\"]\nreferences = \"30001..=30050\"\nsources = [\"poll\"]\n\n\
                 [[modbus]]\nbridge = \"line{bridge}\"\nunits = {unit}\nfunctions = [1, 2]\naddresses = \"0..=31\"\nsources = [\"poll\", \"facade\"]\n\n\
                 [[modbus]]\nbridge = \"line{bridge}\"\nunits = {unit}\nfunctions = [6, 16]\naddresses = \"10..=19\"\nsources = [\"cloud\"]\nvalues = \"0..=1000\"\nrate = \"10/s\"\n\n\
                 [[modbus]]\nbridge = \"line{bridge}\"\nunits = {unit}\nfunctions = [5, 15]\naddresses = \"0..=7\"\nsources = [\"facade\"]\nvalues = \"any\"\n\n"
            ));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let compiled = compile(&policy_source(), "bench.toml").expect("bench policy compiles");
    let policy = compiled.policy;
    assert_eq!(policy.rule_count(), 200);
    let tables = policy.tables();
    let bridges: Vec<_> = (0..4)
        .map(|b| policy.bridge_id(&format!("line{b}")).expect("bridge"))
        .collect();
    let mut rate = RateState::for_tables(&tables);
    let values = [500u16; 4];
    let read = |i: usize| ModbusRequest {
        bridge: bridges[i % 4],
        unit: (i % 10) as u8 + 1,
        function: 3,
        address: (i % 90) as u16,
        count: 10,
        values: &[],
        source: Source::Poll,
    };
    let allowed_reads: Vec<_> = (0..1024).map(|i| Request::Modbus(read(i))).collect();
    let allowed_writes: Vec<_> = (0..1024)
        .map(|i| {
            Request::Modbus(ModbusRequest {
                function: 16,
                address: 10 + (i % 7) as u16,
                count: 4,
                values: &values[..],
                source: Source::Cloud,
                ..read(i)
            })
        })
        .collect();
    let denied: Vec<_> = (0..1024)
        .map(|i| {
            let r = read(i);
            Request::Modbus(match i % 4 {
                0 => ModbusRequest { address: 95, ..r }, // range runs past 99
                1 => ModbusRequest { unit: 42, ..r },    // unit not named
                2 => ModbusRequest {
                    source: Source::Cloud,
                    ..r
                }, // source not named
                _ => ModbusRequest {
                    function: 6,
                    values: &values[..1],
                    count: 1,
                    address: 10,
                    source: Source::Facade,
                    ..r
                },
            })
        })
        .collect();
    for (name, requests, step_ms) in [
        ("allowed reads", &allowed_reads, 0u64),
        ("allowed rate-limited writes", &allowed_writes, 1_000),
        ("denied mix", &denied, 0),
    ] {
        let mut group = c.benchmark_group("policy");
        group.throughput(Throughput::Elements(requests.len() as u64));
        let mut now = 0u64;
        let expect_allowed = name.starts_with("allowed");
        for r in requests.iter() {
            now += step_ms;
            assert_eq!(
                evaluate(&tables, &mut rate, r, now).is_allowed(),
                expect_allowed,
                "{name}: {r:?}"
            );
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut allowed = 0u32;
                for r in requests.iter() {
                    now += step_ms;
                    allowed +=
                        u32::from(evaluate(&tables, &mut rate, black_box(r), now).is_allowed());
                }
                black_box(allowed)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
