//! Read planning: adjacent points merged into as few requests as the limits allow.

use crate::modbus::pdu::Request;
use crate::modbus::{MAX_READ_BITS, MAX_READ_REGISTERS};
use crate::point::{PointConfig, RegisterKind};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    /// Modbus unit.
    pub unit: u8,
    /// Table read.
    pub kind: RegisterKind,
    /// First address read.
    pub address: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indices (into the bridge's points) of the points this block serves.
    pub points: Vec<usize>,
    /// Poll interval shared by those points, in milliseconds.
    pub interval_ms: u64,
}

impl ReadBlock {
    /// The request that reads this block.
    pub fn request(&self) -> Request {
        if self.kind.is_bit() {
            Request::ReadBits {
                function: self.kind.read_function(),
                address: self.address,
                count: self.count,
            }
        } else {
            Request::ReadRegisters {
                function: self.kind.read_function(),
                address: self.address,
                count: self.count,
            }
        }
    }

    /// One block per point of this block (when a merged read is refused).
    pub fn split(&self, points: &[PointConfig]) -> Vec<ReadBlock> {
        self.points
            .iter()
            .filter_map(|&index| {
                let point = points.get(index)?;
                Some(ReadBlock {
                    unit: self.unit,
                    kind: self.kind,
                    address: point.address,
                    count: point.register_count(),
                    points: vec![index],
                    interval_ms: self.interval_ms,
                })
            })
            .collect()
    }
}

/// Merges `points` into read blocks: points of the same unit, table and poll interval
/// are read together when the gap between them is at most `max_gap` registers (or
/// bits) and the request stays within 125 registers (2000 bits).
pub fn plan_reads(points: &[PointConfig], default_unit: u8, max_gap: u16) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    let key = |i: &usize| {
        let p = &points[*i];
        (
            p.unit_id.unwrap_or(default_unit),
            p.kind,
            p.poll_interval_ms,
            p.address,
        )
    };
    order.sort_by_key(key);
    let mut blocks: Vec<ReadBlock> = Vec::new();
    for index in order {
        let point = &points[index];
        let unit = point.unit_id.unwrap_or(default_unit);
        let start = u32::from(point.address);
        let end = start + u32::from(point.register_count());
        let limit = if point.kind.is_bit() {
            u32::from(MAX_READ_BITS)
        } else {
            u32::from(MAX_READ_REGISTERS)
        };
        if let Some(block) = blocks.last_mut() {
            let block_start = u32::from(block.address);
            let block_end = block_start + u32::from(block.count);
            let same_group = block.unit == unit
                && block.kind == point.kind
                && block.interval_ms == point.poll_interval_ms;
            let merged_end = block_end.max(end);
            if same_group
                && start <= block_end + u32::from(max_gap)
                && merged_end - block_start <= limit
            {
                block.count = (merged_end - block_start) as u16;
                block.points.push(index);
                continue;
            }
        }
        blocks.push(ReadBlock {
            unit,
            kind: point.kind,
            address: point.address,
            count: point.register_count(),
            points: vec![index],
            interval_ms: point.poll_interval_ms,
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{ByteOrder, DataType, WordOrder};
    use proptest::prelude::*;

    fn point(address: u16, data_type: DataType, kind: RegisterKind) -> PointConfig {
        PointConfig {
            name: format!("p{address}"),
            kind,
            address,
            unit_id: None,
            data_type,
            length: None,
            word_order: WordOrder::BigEndian,
            byte_order: ByteOrder::BigEndian,
            scale: 1.0,
            offset: 0.0,
            unit: String::new(),
            deadband: 0.0,
            poll_interval_ms: 1000,
            decimals: None,
        }
    }

    #[test]
    fn adjacent_points_share_a_request_and_far_ones_do_not() {
        let points = vec![
            point(0, DataType::U16, RegisterKind::Holding),
            point(1, DataType::F32, RegisterKind::Holding),
            point(5, DataType::U16, RegisterKind::Holding),
            point(100, DataType::U16, RegisterKind::Holding),
            point(2, DataType::U16, RegisterKind::Input),
            point(7, DataType::Bool, RegisterKind::Coil),
        ];
        let blocks = plan_reads(&points, 1, 4);
        let summary: Vec<_> = blocks
            .iter()
            .map(|b| (b.kind, b.address, b.count, b.points.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (RegisterKind::Coil, 7, 1, vec![5]),
                (RegisterKind::Holding, 0, 6, vec![0, 1, 2]),
                (RegisterKind::Holding, 100, 1, vec![3]),
                (RegisterKind::Input, 2, 1, vec![4]),
            ]
        );
    }

    proptest! {
        #[test]
        fn blocks_cover_their_points_within_the_limits(
            addresses in proptest::collection::vec((0u16..400, 0usize..3), 1..60),
            max_gap in 0u16..20,
        ) {
            let types = [DataType::U16, DataType::U32, DataType::F64];
            let points: Vec<_> = addresses
                .iter()
                .map(|&(a, t)| point(a, types[t], RegisterKind::Holding))
                .collect();
            let blocks = plan_reads(&points, 1, max_gap);
            let mut served = 0;
            for block in &blocks {
                prop_assert!(block.count >= 1 && block.count <= 125);
                for &i in &block.points {
                    let p = &points[i];
                    prop_assert!(p.address >= block.address);
                    prop_assert!(u32::from(p.address) + u32::from(p.register_count())
                        <= u32::from(block.address) + u32::from(block.count));
                    served += 1;
                }
            }
            prop_assert_eq!(served, points.len());
        }
    }
}
