// Shared memory: the key-cache generation counter and per-version encryption counters.
#pragma once

#include <cstdint>

#include "pgkm/pg/postgres.hpp"

extern "C"
{
	struct LWLock;
}

namespace pgkm::pg
{

inline constexpr int kWorkerSlots = 128; // databases with a pgkm worker at once

// Installs the shared-memory hooks; called from _PG_init under shared_preload_libraries.
void ShmemInit();

// Whether pgkm was loaded through shared_preload_libraries (its shared memory exists).
bool SharedMemoryReady();

// Raises a clear error when pgkm was not loaded through shared_preload_libraries.
void RequireSharedMemory();

// The generation counter: bumped when keys change, invalidating every backend's cache.
std::uint64_t ReadGeneration();
void BumpGeneration();

// The cluster-wide lock held around every call into the token. Token calls are rare (once
// per DEK per backend), and SoftHSM2 misreads its token files when processes log in at the
// same moment; serialising also makes "find or generate the master key" atomic.
LWLock *TokenLock();

// Returns this database's counter for (key_id, version), creating it if needed; nullptr
// when all pgkm.max_counted_versions are taken (a WARNING says so once).
struct CounterSlot *CounterFor(std::uint32_t key_id, std::uint32_t version);
// Adds n to a slot's count.
void CounterAdd(CounterSlot *slot, std::uint64_t n);

// Visits this database's slots: key id, version, encryptions not yet flushed.
struct CounterEntry
{
	std::uint32_t key_id;
	std::uint32_t version;
	std::uint32_t epoch; // of the counter when read: a reset since makes it stale
	std::uint64_t unflushed;
};
// This database's counters, palloc'd; *count is how many.
CounterEntry *CounterSnapshot(int *count);
// Zeroes the count of (key_id, version), when that version is created: ids come back after
// DROP EXTENSION and CREATE EXTENSION, and a new version has encrypted nothing yet.
void CounterReset(std::uint32_t key_id, std::uint32_t version);
// Subtracts a snapshot's count from its counter, after those counts reached the catalog;
// nothing if the counter was reset since the snapshot (the version was created anew: key ids
// come back after DROP EXTENSION, and a flush may be under way meanwhile).
void CounterSubtract(const CounterEntry &flushed);
// Frees the counter of a snapshot's (key_id, version) if it counts nothing unflushed and was
// not reset since: called for versions
// that can no longer encrypt (retired, destroyed or gone) once their counts reached the
// catalog. A backend still holding it (a statement that began before the version's rotation
// and is still running after its retirement) would count into whichever version reuses the
// entry: an over-count, which rotates that key early rather than late.
void CounterRelease(const CounterEntry &flushed);

// Claims the worker slot of a database for this process; false if another worker has it.
bool WorkerClaim(Oid dbid);
// Frees this process's worker slot.
void WorkerRelease(Oid dbid);
// Whether a worker holds the slot of a database.
bool WorkerRunning(Oid dbid);
// Sets the latch of a database's worker, if one runs.
void WorkerWake(Oid dbid);

} // namespace pgkm::pg
