//! Counters and drop events.

use aya_ebpf::programs::TcContext;
use npenforce_common::{node_counter, DataplaneConfig, DropEvent};

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

use crate::{
    conntrack::{now, ticks},
    maps::{DROP_EVENTS, DROP_EVENT_BUDGET, NODE_COUNTERS, POD_COUNTERS},
    parse::Packet,
};

#[inline(always)]
pub fn count_node(index: u32) {
    if let Some(counter) = NODE_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}

/// Counts a packet for `pod_id`'s `direction` (allowed or dropped).
#[inline(always)]
pub fn count_pod(pod_id: u32, direction: u8, allowed: bool, bytes: u32) {
    if pod_id == 0 {
        return;
    }
    let index = pod_id.wrapping_mul(2).wrapping_add(direction as u32);
    if let Some(counters) = POD_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        let counters = unsafe { &mut *counters };
        if allowed {
            counters.allowed_packets += 1;
            counters.allowed_bytes += bytes as u64;
        } else {
            counters.dropped_packets += 1;
            counters.dropped_bytes += bytes as u64;
        }
    }
}

/// Counts a drop and, within the per-CPU budget, reports it on the ring buffer.
#[inline(always)]
pub fn report_drop(
    ctx: &TcContext,
    packet: Option<&Packet>,
    pod_id: u32,
    direction: u8,
    reason: u8,
    cfg: &DataplaneConfig,
) {
    count_node(reason as u32);
    count_pod(pod_id, direction, false, ctx.len());
    let Some(budget) = DROP_EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU writes it.
    let budget = unsafe { &mut *budget };
    let now = now();
    if now.saturating_sub(budget.window_start) >= ticks(1, cfg) {
        budget.window_start = now;
        budget.sent = 0;
    }
    if budget.sent >= cfg.drop_events_per_second {
        count_node(node_counter::EVENTS_SUPPRESSED);
        return;
    }
    budget.sent += 1;
    let mut event = DropEvent {
        // SAFETY: helper without preconditions. Events are rate-limited, so the clock call
        // is off the per-packet path.
        timestamp_ns: unsafe { bpf_ktime_get_coarse_ns() },
        src: [0; 16],
        dst: [0; 16],
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        pod_id,
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        reason,
        direction,
        _pad: 0,
    };
    if let Some(p) = packet {
        event.src = p.src.0;
        event.dst = p.dst.0;
        event.src_port = p.src_port;
        event.dst_port = p.dst_port;
        event.protocol = p.protocol;
    }
    let _ = DROP_EVENTS.output::<DropEvent>(&event, 0);
}
