use super::*;
use crate::evict::{Access, Hazard, Policy};

/// Slot state in process memory, as the arena keeps it in shared memory.
struct Mem {
    links: Vec<(u32, u32)>,
    uses: Vec<SlotUse>,
    keys: Vec<u64>,
    pinned: Vec<bool>,
    departed: Vec<Departed>,
}

impl Mem {
    fn new(slots: usize, departed: usize) -> Self {
        Self {
            links: vec![(NIL, NIL); slots],
            uses: vec![SlotUse::default(); slots],
            keys: vec![0; slots],
            pinned: vec![false; slots],
            departed: vec![Departed::default(); departed],
        }
    }
}

impl LinkStore for Mem {
    fn links(&self, i: u32) -> (u32, u32) {
        self.links[i as usize]
    }
    fn set_links(&mut self, i: u32, prev: u32, next: u32) {
        self.links[i as usize] = (prev, next);
    }
}

impl HazardStore for Mem {
    fn slot_use(&self, slot: u32) -> SlotUse {
        self.uses[slot as usize]
    }
    fn set_slot_use(&mut self, slot: u32, u: SlotUse) {
        self.uses[slot as usize] = u;
    }
    fn slot_key(&self, slot: u32) -> u64 {
        self.keys[slot as usize]
    }
    fn evictable(&self, slot: u32) -> Option<bool> {
        Some(!self.pinned[slot as usize])
    }
    fn departed(&mut self) -> &mut [Departed] {
        &mut self.departed
    }
}

/// A deterministic stream of accesses: chains of 1-6 keys out of `keys`, some
/// keys far more popular, time moving on by 0-2 s per chain.
fn stream(n: usize, keys: u64) -> Vec<Access> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut request = 0u64;
    while out.len() < n {
        request += 1;
        now += next() % 2000;
        let len = 1 + (next() % 6) as u32;
        let base = if next() % 3 == 0 { next() % 8 } else { next() % keys };
        for depth in 0..len {
            out.push(Access {
                key: (base * 16 + u64::from(depth)) % (keys * 16) + 1,
                request,
                depth,
                last: depth + 1 == len,
                now_ms: now,
            });
        }
    }
    out
}

/// The slot form evicts exactly what the keyed form evicts, on the same stream
/// (no admission; departed tables large enough not to forget).
#[test]
fn slot_form_evicts_as_the_keyed_form() {
    let (refusals, evictions) = drive_both_forms(false);
    assert_eq!(refusals, 0);
    assert!(evictions > 1000, "the stream must overflow the cache: {evictions}");
}

/// With admission, as the host arena asks it (`Locked::take_slot`: the victim's
/// odds, a chain's next block refused without asking after a refusal), the slot
/// form admits, refuses and evicts as the keyed form on the same stream.
#[test]
fn slot_form_admits_as_the_keyed_form() {
    let (refusals, evictions) = drive_both_forms(true);
    assert!(
        refusals > 100 && evictions > 100,
        "both happen: {refusals} refusals, {evictions} evictions"
    );
}

/// Drives the keyed and the slot form with one stream into 48 slots, checking
/// that every decision agrees (admission asked when `admission`); returns the
/// refusals and evictions.
fn drive_both_forms(admission: bool) -> (u32, u32) {
    const SLOTS: usize = 48;
    let mut keyed = Hazard::new(1 << 14);
    let mut slots = SlotHazard::default();
    let mut mem = Mem::new(SLOTS, 1 << 14);
    let mut where_: std::collections::HashMap<u64, u32> = Default::default();
    let mut free: Vec<u32> = (0..SLOTS as u32).rev().collect();
    let mut refused_at: Option<(u64, u32)> = None;
    let (mut refusals, mut evictions, mut last_now) = (0, 0, 0);
    for a in stream(20_000, 40) {
        let sa = SlotAccess {
            request: a.request,
            last: a.last,
            now_ms: a.now_ms,
        };
        if let Some(&slot) = where_.get(&a.key) {
            keyed.on_hit(a);
            slots.accessed(&mut mem, slot, sa);
            last_now = a.now_ms;
            continue;
        }
        let slot = match free.pop() {
            Some(s) => s,
            None => {
                // The keyed form's admission moves its clock to this access
                // before it looks for a victim; its eviction alone does not.
                let now = if admission { a.now_ms } else { last_now };
                let after_refusal = refused_at == Some((a.request, a.depth.wrapping_sub(1)));
                let victim =
                    (!admission || !after_refusal).then(|| slots.victim(&mem, 256, now).expect("a slot victim"));
                let admitted = !admission || victim.is_some_and(|v| slots.admits(&mut mem, a.key, sa, v));
                if admission {
                    assert_eq!(keyed.admit(a, &mut |_| true), admitted, "admission {refusals} differs");
                }
                let Some(victim) = victim.filter(|_| admitted) else {
                    slots.refused(&mut mem, a.key, sa);
                    refused_at = Some((a.request, a.depth));
                    refusals += 1;
                    last_now = a.now_ms;
                    continue;
                };
                let k = keyed.evict(&mut |_| true).expect("a keyed victim");
                assert_eq!(mem.keys[victim as usize], k, "eviction {evictions} differs");
                slots.evicted(&mut mem, victim);
                where_.remove(&k);
                evictions += 1;
                victim
            }
        };
        mem.keys[slot as usize] = a.key;
        where_.insert(a.key, slot);
        keyed.on_insert(a);
        slots.inserted(&mut mem, slot, sa);
        last_now = a.now_ms;
        assert_eq!(slots.len() as usize, keyed.len());
    }
    (refusals, evictions)
}

/// Pinned slots are passed over; all pinned: no victim.
#[test]
fn pinned_slots_are_skipped() {
    let mut h = SlotHazard::default();
    let mut mem = Mem::new(4, 16);
    for s in 0..4u32 {
        mem.keys[s as usize] = u64::from(s) + 100;
        let a = SlotAccess {
            request: u64::from(s),
            last: false,
            now_ms: u64::from(s) * 10,
        };
        h.inserted(&mut mem, s, a);
    }
    assert_eq!(
        h.victim(&mem, 64, 100),
        Some(0),
        "oldest first while nothing is learned"
    );
    mem.pinned[0] = true;
    assert_eq!(h.victim(&mem, 64, 100), Some(1));
    mem.pinned.iter_mut().for_each(|p| *p = true);
    assert_eq!(h.victim(&mem, 64, 100), None);
}

/// A departed key (evicted or refused) that returns is learned as a reuse: its
/// use count goes on.
#[test]
fn departed_keys_return_with_their_uses() {
    let mut h = SlotHazard::default();
    let mut mem = Mem::new(1, 8);
    mem.keys[0] = 7;
    let a = |t| SlotAccess {
        request: t,
        last: false,
        now_ms: t,
    };
    h.inserted(&mut mem, 0, a(1));
    h.accessed(&mut mem, 0, a(2));
    assert_eq!(mem.uses[0].uses, 2);
    let v = h.victim(&mem, 8, 3).unwrap();
    h.evicted(&mut mem, v);
    assert!(h.is_empty());
    h.inserted(&mut mem, 0, a(4));
    assert_eq!(mem.uses[0].uses, 3, "the departed entry was found");
    assert_eq!(mem.uses[0].class, class(3, false) as u32);
    // A refused key is remembered alike: its refusal was its first use.
    let mut refusing = Mem::new(1, 8);
    refusing.keys[0] = 9;
    let mut h = SlotHazard::default();
    h.refused(&mut refusing, 9, a(1));
    h.inserted(&mut refusing, 0, a(2));
    assert_eq!(refusing.uses[0].uses, 2, "the refusal was the first use");
    // An empty departed table (a tiny arena) forgets, never fails.
    let mut bare = Mem::new(1, 0);
    bare.keys[0] = 7;
    let mut h = SlotHazard::default();
    h.inserted(&mut bare, 0, a(1));
    let v = h.victim(&bare, 8, 2).unwrap();
    h.evicted(&mut bare, v);
    h.inserted(&mut bare, 0, a(3));
    assert_eq!(bare.uses[0].uses, 1);
}

/// Garbage in a slot's record (another process wrote it) bounds to a class.
#[test]
fn garbage_class_is_bounded() {
    let mut h = SlotHazard::default();
    let mut mem = Mem::new(2, 8);
    mem.keys = vec![1, 2];
    let a = SlotAccess {
        request: 1,
        last: true,
        now_ms: 5,
    };
    h.inserted(&mut mem, 0, a);
    mem.uses[0].class = u32::MAX;
    mem.uses[0].uses = u32::MAX;
    // The slot is on list `class(1, true)`; its record says otherwise: removing it
    // from the bounded class's list is the store's damage to detect, but nothing
    // indexes out of range.
    h.inserted(&mut mem, 1, a);
    let _ = h.victim(&mem, 8, 6);
    let _ = h.order(&mem, 8);
}
