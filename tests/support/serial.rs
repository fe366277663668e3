//! Rooms for tests that must not overlap tests of another kind in one test binary (libtest runs a
//! binary's tests on parallel threads): a room admits any number of tests of its own name and none of
//! another's until it is empty again. Tests that claim no room run beside anything.

use std::sync::{Condvar, Mutex, PoisonError};

/// The name of the room in use and how many tests are in it.
static OCCUPANCY: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static EMPTIED: Condvar = Condvar::new();

/// A test's place in a room, left when dropped (also when the test panics).
#[must_use = "the room is left when this is dropped"]
pub struct Room(&'static str);

/// Waits until the room in use is `name` or none, then enters `name`.
///
/// A test holds one room at most, so no test waits while holding one: no deadlock. Blocking here is
/// fine in an async test: it is the test's first statement, before its runtime has anything else to do.
pub fn room(name: &'static str) -> Room {
    let mut occupancy = OCCUPANCY.lock().unwrap_or_else(PoisonError::into_inner);
    while occupancy.0.is_some_and(|held| held != name) {
        occupancy = EMPTIED
            .wait(occupancy)
            .unwrap_or_else(PoisonError::into_inner);
    }
    occupancy.0 = Some(name);
    occupancy.1 += 1;
    Room(name)
}

impl Drop for Room {
    fn drop(&mut self) {
        let mut occupancy = OCCUPANCY.lock().unwrap_or_else(PoisonError::into_inner);
        debug_assert_eq!(occupancy.0, Some(self.0));
        occupancy.1 -= 1;
        if occupancy.1 == 0 {
            occupancy.0 = None;
            EMPTIED.notify_all();
        }
    }
}

/// One test on a node at a time: every node uses the machine's one CNI bridge, its address and its
/// pod subnet, so two at once would take each other's pods and routes. Taken inside the `node` room
/// (which keeps the lighter control-plane tests out), released on drop, also when the test panics.
static NODE_TAKEN: Mutex<bool> = Mutex::new(false);
static NODE_FREED: Condvar = Condvar::new();

#[must_use = "the node is given back when this is dropped"]
pub struct NodeTurn(());

/// Waits until no other test holds the node, then holds it.
pub fn node_turn() -> NodeTurn {
    let mut taken = NODE_TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    while *taken {
        taken = NODE_FREED
            .wait(taken)
            .unwrap_or_else(PoisonError::into_inner);
    }
    *taken = true;
    NodeTurn(())
}

impl Drop for NodeTurn {
    fn drop(&mut self) {
        *NODE_TAKEN.lock().unwrap_or_else(PoisonError::into_inner) = false;
        NODE_FREED.notify_one();
    }
}
