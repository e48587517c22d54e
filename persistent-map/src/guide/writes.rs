//! Writes: read-modify-writes, the entry API, batches, transactions, hot keys, and the one path
//! every write takes.
//!
//! # Single writes
//!
//! [`insert`](crate::PersistentMap::insert) and [`remove`](crate::PersistentMap::remove) go to
//! the backend first; memory changes only once the backend says `Ok`, and they return what
//! storage held under the key just before, whoever wrote it. Writes of one key are applied one
//! after another, in memory and in storage in the same order; writes of different keys proceed
//! concurrently and share commits. A write that has been handed to the backend runs to
//! completion even if the future that started it is dropped, so cancellation cannot make memory
//! and storage drift apart.
//!
//! # Read-modify-writes
//!
//! [`update`](crate::PersistentMap::update),
//! [`get_or_insert_with`](crate::PersistentMap::get_or_insert_with),
//! [`compare_exchange`](crate::PersistentMap::compare_exchange) and the entry API write only if
//! storage still holds what they read, checked in the same atomic step as the write (for
//! SQLite, the `IMMEDIATE` transaction that commits it, which excludes every other process). If
//! another handle or process got there first, nothing is written, memory takes what storage
//! holds, and the closure runs again on that: it may run more than once, so keep it a function
//! of its argument. A condition compares what a value means, not how it was spelled: an old row
//! that lacks a `#[serde(default)]` field, or has its JSON keys in another order, matches the
//! value it decodes to.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let hits: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! let home = "home".to_string();
//! // A counter no process can lose an increment of:
//! hits.update(&home, |n| Some(n.copied().unwrap_or(0) + 1)).await?;
//! // Insert if absent, and say whether it did:
//! let first_visit = hits.entry("ada".to_string()).or_insert(1).await?.inserted;
//! assert!(first_visit);
//! // Modify in place, or insert if absent:
//! let ada = hits.entry("ada".to_string()).and_modify(|n| *n += 1).or_insert(1).await?;
//! assert_eq!((ada.value, ada.inserted), (2, false));
//! // Store only if nobody changed it since it was read (std's compare_exchange):
//! let seen = hits.get(&home);
//! let swapped = hits.compare_exchange(&home, seen.as_ref(), Some(0)).await?.is_ok();
//! assert!(swapped);
//! # Ok(()) }));
//! ```
//!
//! A read-modify-write that keeps conflicting gives up after 1,000 attempts with
//! [`PersistentError::KeepsChanging`](crate::PersistentError::KeepsChanging), naming the table
//! and the key; nothing was written by that call.
//!
//! # Batches
//!
//! [`insert_many`](crate::PersistentMap::insert_many),
//! [`remove_many`](crate::PersistentMap::remove_many), [`retain`](crate::PersistentMap::retain)
//! and [`clear`](crate::PersistentMap::clear) are each one storage transaction: all of it or
//! nothing, in storage and in memory.
//!
//! ```
//! # use persistent_map::{sqlite::SqliteBackend, PersistentMap};
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let stock: PersistentMap<String, u32, SqliteBackend> = PersistentMap::open(&path).await?;
//! let fruit = ["apples", "pears", "plums", "kiwis"].map(String::from);
//! stock.insert_many(fruit.iter().cloned().zip([3, 0, 12, 0])).await?;
//! assert_eq!(stock.retain(|_, count| *count > 0).await?, 2); // 2 removed
//! assert_eq!(stock.remove_many([fruit[0].clone(), "figs".into()]).await?, 1);
//! stock.clear().await?;
//! assert!(stock.is_empty());
//! # Ok(()) }));
//! ```
//!
//! # Transactions
//!
//! [`transaction`](crate::transaction) reads and writes several keys of one or more maps, all
//! or nothing. Its body runs against memory (its reads see its own writes); the commit writes
//! everything in one storage transaction on the condition that nothing it read has changed,
//! and otherwise runs the body again on what storage holds, this time holding the turns of the
//! keys it touched, so that contended transactions in one process take turns instead of
//! conflicting again. A body that returns `Err` aborts, writing nothing, and the transaction
//! returns that error. The error type is yours, as long as a
//! [`PersistentError`](crate::PersistentError) (the commit's own failure) converts into it:
//! `PersistentError` itself, [`TransactionError<A>`](crate::TransactionError) (either
//! `Abort(reason)`, with a reason of any type `A`, or `Storage(PersistentError)`), or an enum
//! of your own with a `From<PersistentError>`.
//!
//! ```
//! use persistent_map::{sqlite::SqliteBackend, transaction, PersistentMap, TransactionError};
//!
//! type Accounts = PersistentMap<String, u32, SqliteBackend>;
//!
//! /// Moves `amount` from `from` to `to`, or aborts with the balance that was too low.
//! async fn transfer(accounts: &Accounts, from: &String, to: &String, amount: u32)
//!     -> Result<(), TransactionError<u32>>
//! {
//!     transaction(|tx| {
//!         let balance = tx.get(accounts, from).unwrap_or(0);
//!         if balance < amount {
//!             return Err(TransactionError::Abort(balance)); // aborts: nothing is written
//!         }
//!         tx.insert(accounts, from.clone(), balance - amount);
//!         tx.update(accounts, to, |b| Some(b.copied().unwrap_or(0) + amount));
//!         Ok(())
//!     })
//!     .await
//! }
//!
//! # persistent_map::__private::run_example(Box::pin(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("bank.db");
//! let accounts: Accounts = PersistentMap::open(&path).await?;
//! let (ada, bob) = ("ada".to_string(), "bob".to_string());
//! accounts.insert(ada.clone(), 100).await?;
//!
//! transfer(&accounts, &ada, &bob, 60).await?;
//! let refused = transfer(&accounts, &ada, &bob, 60).await;
//! assert!(matches!(refused, Err(TransactionError::Abort(40))));
//! assert_eq!((accounts.get(&ada), accounts.get(&bob)), (Some(40), Some(60)));
//! # Ok(()) }));
//! ```
//!
//! Transactions take the SQLite, PostgreSQL and in-memory backends
//! ([`TransactionalBackend`](crate::TransactionalBackend)): tables of one SQLite file commit in
//! one `IMMEDIATE` transaction; tables of one PostgreSQL database, opened with the same
//! connection string and timeouts (so sharing the process's connection), commit in one
//! PostgreSQL transaction under the advisory locks of every key involved, checked and logged
//! like any other write, atomic against every instance. Maps of two different files, databases
//! or connections (or a file and an in-memory store, or PostgreSQL and SQLite) in one
//! transaction are refused with
//! [`PersistentError::MixedStorage`](crate::PersistentError::MixedStorage) before anything is
//! written. A transaction that keeps conflicting gives up after 1,000 attempts, as a
//! read-modify-write does.
//!
//! # Hot keys
//!
//! Writes of a hot key share commits. On SQLite (and the in-memory backend), a key's next
//! `insert`, `remove` or `update` goes to the writer before the previous write of that key has
//! committed, while memory still takes them in commit order: an update is computed from what
//! the key will hold and conditioned on it, so one built on a write that then fails is refused
//! and computed again. A commit group reads each key's stored value once and logs each key once,
//! however many of its writes the group holds. The bench's `hot-update` row, 16 tasks updating
//! one key, makes 7.4-9.2x the updates per second of raw rusqlite doing each read-modify-write
//! in its own transaction ([`speed`](super::speed)).
//!
//! On PostgreSQL, writes go to the connection's queue as they are made and are committed in
//! queue order, so there too a hot key's next write is handed over before the previous one
//! commits: an instance's concurrent updates of one key are chained into one transaction and
//! one lock acquisition, and an instance whose updates conflict with another instance's keeps
//! the key's lock while they are computed again ([`postgresql`](super::postgresql)).
//!
//! # One write path
//!
//! Every write of every kind (single writes, read-modify-writes, the entry API, batches,
//! transactions, `expire` and `persist`) becomes one checked write per map: conditions (a key,
//! and the stored text expected) and ops (save, with its own deadline; delete; clear), taken in
//! the keys' turns. It is handed to the storage in one call (one SQLite or PostgreSQL
//! transaction, the in-memory store's lock, or a custom backend's
//! [`apply_checked`](crate::StorageBackend::apply_checked)), all or nothing, and storage's
//! answer is settled into memory and to subscribers by one function, in the keys' commit order.
//! A condition that does not hold writes nothing anywhere; storage answers with what it holds
//! under each condition's key, from the same read inside the transaction that checked, and
//! memory takes exactly that. So there is one place where ordering, failure atomicity and
//! durability are decided. The repository's `tests/tests/interleavings.rs` drives this path
//! through thousands of seeded schedules (see [`repository`](super::repository#the-tests)).
//!
//! A custom backend gets all of this within one process only, unless it overrides
//! [`apply_checked`](crate::StorageBackend::apply_checked) to check and write in one atomic
//! step (its docs say how).
