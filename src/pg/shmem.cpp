// Shared memory: the key-cache generation counter, the master-key lock and the
// per-version encryption counters (approximate: counted here, flushed to the catalog).
// Only AES-GCM versions are counted: their random nonces wear out; SIV and HMAC have no such
// limit.
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/guc.hpp"

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// The counter of one key version of one database: an entry of a shared hash table, which
// never moves while it exists, so a backend keeps a pointer to it in its key cache.
struct CounterKey
{
	Oid dbid;
	std::uint32_t key_id;
	std::uint32_t version;
};

struct CounterSlot
{
	CounterKey key;      // first: the hash key
	std::uint32_t epoch; // bumped by CounterReset (under counter_lock, exclusive)
	pg_atomic_uint64 count;
};

namespace
{

// The worker of one database: its process and latch (dbid InvalidOid: free).
struct WorkerSlot
{
	Oid dbid;
	pid_t pid;
	Latch *latch;
};

struct SharedState
{
	pg_atomic_uint64 generation;
	LWLock *token_lock;
	LWLock *counter_lock;
	LWLock *worker_lock;
	bool warned_full;
	WorkerSlot workers[kWorkerSlots];
};

constexpr const char *kTranche = "pgkm";
SharedState *shared = nullptr;
HTAB *counters = nullptr; // CounterKey -> CounterSlot, at most guc_max_counted_versions
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;
#if PG_VERSION_NUM >= 150000
shmem_request_hook_type prev_shmem_request_hook = nullptr;
#endif

// Asks the postmaster for pgkm's shared memory and locks.
void RequestShmem()
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(SharedState)));
	RequestAddinShmemSpace(hash_estimate_size(guc_max_counted_versions, sizeof(CounterSlot)));
	RequestNamedLWLockTranche(kTranche, 3);
	RequestAddinShmemSpace(AuditRingShmemSize());
	AuditRingRequestLocks();
}

#if PG_VERSION_NUM >= 150000
// shmem_request_hook: requests space in the phase PostgreSQL 15 reserves for it.
void ShmemRequest()
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestShmem();
}
#endif

// shmem_startup_hook: creates or attaches to the shared state.
void ShmemStartup()
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bool found;
	shared = static_cast<SharedState *>(ShmemInitStruct("pgkm", sizeof(SharedState), &found));
	if (!found)
	{
		memset(shared, 0, sizeof(SharedState));
		pg_atomic_init_u64(&shared->generation, 1);
		LWLockPadded *locks = GetNamedLWLockTranche(kTranche);
		shared->token_lock = &locks[0].lock;
		shared->counter_lock = &locks[1].lock;
		shared->worker_lock = &locks[2].lock;
	}
	HASHCTL info;
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(CounterKey);
	info.entrysize = sizeof(CounterSlot);
	counters =
		ShmemInitHash("pgkm encryption counters", guc_max_counted_versions,
					  guc_max_counted_versions, &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	AuditRingShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

} // namespace

void ShmemInit()
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ShmemRequest;
#else
	RequestShmem();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ShmemStartup;
}

bool SharedMemoryReady()
{
	return shared != nullptr;
}

void RequireSharedMemory()
{
	if (likely(shared != nullptr))
		return;
	ereport(
		ERROR,
		(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		 errmsg("pgkm must be loaded via shared_preload_libraries"),
		 errhint(
			 "Add pgkm to shared_preload_libraries in postgresql.conf and restart the server.")));
}

std::uint64_t ReadGeneration()
{
	return pg_atomic_read_u64(&shared->generation);
}

void BumpGeneration()
{
	if (shared)
		pg_atomic_fetch_add_u64(&shared->generation, 1);
}

LWLock *TokenLock()
{
	return shared->token_lock;
}

namespace
{

CounterKey KeyOf(std::uint32_t key_id, std::uint32_t version)
{
	CounterKey key;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.key_id = key_id;
	key.version = version;
	return key;
}

// The slot of (key_id, version) in this database, or nullptr; the caller holds counter_lock.
CounterSlot *FindCounter(std::uint32_t key_id, std::uint32_t version)
{
	CounterKey key = KeyOf(key_id, version);
	return static_cast<CounterSlot *>(hash_search(counters, &key, HASH_FIND, nullptr));
}

} // namespace

CounterSlot *CounterFor(std::uint32_t key_id, std::uint32_t version)
{
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	CounterSlot *slot = FindCounter(key_id, version);
	LWLockRelease(shared->counter_lock);
	if (slot)
		return slot;

	LWLockAcquire(shared->counter_lock, LW_EXCLUSIVE);
	CounterKey key = KeyOf(key_id, version);
	bool found;
	slot = static_cast<CounterSlot *>(hash_search(counters, &key, HASH_ENTER_NULL, &found));
	if (slot && !found)
	{
		slot->epoch = 0;
		pg_atomic_init_u64(&slot->count, 0);
	}
	bool warn = slot == nullptr && !shared->warned_full;
	if (warn)
		shared->warned_full = true;
	LWLockRelease(shared->counter_lock);
	if (warn)
		ereport(WARNING,
				(errmsg("pgkm: all %d encryption counters are in use", guc_max_counted_versions),
				 errdetail("Encryptions under further key versions are not counted until a "
						   "flush frees the counters of retired versions."),
				 errhint("Raise pgkm.max_counted_versions (takes effect at a restart).")));
	return slot;
}

void CounterAdd(CounterSlot *slot, std::uint64_t n)
{
	pg_atomic_fetch_add_u64(&slot->count, n);
}

CounterEntry *CounterSnapshot(int *count)
{
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	long total = hash_get_num_entries(counters);
	auto *out = static_cast<CounterEntry *>(palloc(sizeof(CounterEntry) * (total + 1)));
	int n = 0;
	HASH_SEQ_STATUS scan;
	hash_seq_init(&scan, counters);
	while (auto *slot = static_cast<CounterSlot *>(hash_seq_search(&scan)))
	{
		if (slot->key.dbid != MyDatabaseId)
			continue;
		out[n].key_id = slot->key.key_id;
		out[n].version = slot->key.version;
		out[n].epoch = slot->epoch;
		out[n].unflushed = pg_atomic_read_u64(&slot->count);
		n++;
	}
	LWLockRelease(shared->counter_lock);
	*count = n;
	return out;
}

void CounterReset(std::uint32_t key_id, std::uint32_t version)
{
	// Exclusive: a flush's subtraction (shared) sees either the old epoch and count, or the
	// new ones, never the new count with the old epoch.
	LWLockAcquire(shared->counter_lock, LW_EXCLUSIVE);
	if (CounterSlot *slot = FindCounter(key_id, version))
	{
		slot->epoch++;
		pg_atomic_write_u64(&slot->count, 0);
	}
	LWLockRelease(shared->counter_lock);
}

void CounterSubtract(const CounterEntry &flushed)
{
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	CounterSlot *slot = FindCounter(flushed.key_id, flushed.version);
	if (slot && slot->epoch == flushed.epoch)
		pg_atomic_fetch_sub_u64(&slot->count, flushed.unflushed);
	LWLockRelease(shared->counter_lock);
}

void CounterRelease(const CounterEntry &flushed)
{
	LWLockAcquire(shared->counter_lock, LW_EXCLUSIVE);
	CounterSlot *slot = FindCounter(flushed.key_id, flushed.version);
	if (slot && slot->epoch == flushed.epoch && pg_atomic_read_u64(&slot->count) == 0)
	{
		CounterKey key = slot->key;
		(void)hash_search(counters, &key, HASH_REMOVE, nullptr);
		shared->warned_full = false;
	}
	LWLockRelease(shared->counter_lock);
}

bool WorkerClaim(Oid dbid)
{
	bool claimed = false;
	LWLockAcquire(shared->worker_lock, LW_EXCLUSIVE);
	WorkerSlot *free_slot = nullptr;
	bool taken = false;
	for (int i = 0; i < kWorkerSlots; i++)
	{
		WorkerSlot *slot = &shared->workers[i];
		if (slot->dbid == dbid)
			taken = true;
		else if (slot->dbid == InvalidOid && free_slot == nullptr)
			free_slot = slot;
	}
	if (!taken && free_slot)
	{
		free_slot->dbid = dbid;
		free_slot->pid = MyProcPid;
		free_slot->latch = MyLatch;
		claimed = true;
	}
	LWLockRelease(shared->worker_lock);
	return claimed;
}

void WorkerRelease(Oid dbid)
{
	LWLockAcquire(shared->worker_lock, LW_EXCLUSIVE);
	for (int i = 0; i < kWorkerSlots; i++)
	{
		WorkerSlot *slot = &shared->workers[i];
		if (slot->dbid == dbid && slot->pid == MyProcPid)
		{
			slot->dbid = InvalidOid;
			slot->pid = 0;
			slot->latch = nullptr;
		}
	}
	LWLockRelease(shared->worker_lock);
}

bool WorkerRunning(Oid dbid)
{
	bool running = false;
	LWLockAcquire(shared->worker_lock, LW_SHARED);
	for (int i = 0; i < kWorkerSlots; i++)
		running |= shared->workers[i].dbid == dbid;
	LWLockRelease(shared->worker_lock);
	return running;
}

void WorkerWake(Oid dbid)
{
	LWLockAcquire(shared->worker_lock, LW_SHARED);
	for (int i = 0; i < kWorkerSlots; i++)
		if (shared->workers[i].dbid == dbid && shared->workers[i].latch)
			SetLatch(shared->workers[i].latch);
	LWLockRelease(shared->worker_lock);
}

} // namespace pgkm::pg
