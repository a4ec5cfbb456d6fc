// Shared memory: the key-cache generation counter, the master-key lock and the
// per-version encryption counters (approximate: counted here, flushed to the catalog).
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/audit_ring.hpp"

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

struct CounterSlot
{
	Oid dbid; // InvalidOid: free
	std::uint32_t key_id;
	std::uint32_t version;
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
	int slots_used;
	bool warned_full;
	CounterSlot slots[kCounterSlots];
	WorkerSlot workers[kWorkerSlots];
};

constexpr const char *kTranche = "pgkm";
SharedState *shared = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;
#if PG_VERSION_NUM >= 150000
shmem_request_hook_type prev_shmem_request_hook = nullptr;
#endif

// Asks the postmaster for pgkm's shared memory and locks.
void RequestShmem()
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(SharedState)));
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
		for (int i = 0; i < kCounterSlots; i++)
			pg_atomic_init_u64(&shared->slots[i].count, 0);
	}
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

CounterSlot *CounterFor(std::uint32_t key_id, std::uint32_t version)
{
	CounterSlot *found = nullptr;
	LWLockAcquire(shared->counter_lock, LW_EXCLUSIVE);
	for (int i = 0; i < shared->slots_used; i++)
	{
		CounterSlot *slot = &shared->slots[i];
		if (slot->dbid == MyDatabaseId && slot->key_id == key_id && slot->version == version)
		{
			found = slot;
			break;
		}
	}
	bool warn = false;
	if (!found && shared->slots_used < kCounterSlots)
	{
		found = &shared->slots[shared->slots_used++];
		found->dbid = MyDatabaseId;
		found->key_id = key_id;
		found->version = version;
		pg_atomic_write_u64(&found->count, 0);
	}
	else if (!found && !shared->warned_full)
		warn = shared->warned_full = true;
	LWLockRelease(shared->counter_lock);
	if (warn)
		ereport(WARNING, (errmsg("pgkm: all %d encryption counter slots are in use", kCounterSlots),
						  errdetail("Encryptions under further key versions are not counted until "
									"the server restarts.")));
	return found;
}

void CounterAdd(CounterSlot *slot, std::uint64_t n)
{
	pg_atomic_fetch_add_u64(&slot->count, n);
}

int CounterSnapshot(CounterEntry *out, int max)
{
	int n = 0;
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	for (int i = 0; i < shared->slots_used && n < max; i++)
	{
		CounterSlot *slot = &shared->slots[i];
		if (slot->dbid != MyDatabaseId)
			continue;
		out[n].key_id = slot->key_id;
		out[n].version = slot->version;
		out[n].unflushed = pg_atomic_read_u64(&slot->count);
		n++;
	}
	LWLockRelease(shared->counter_lock);
	return n;
}

void CounterReset(std::uint32_t key_id, std::uint32_t version)
{
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	for (int i = 0; i < shared->slots_used; i++)
	{
		CounterSlot *slot = &shared->slots[i];
		if (slot->dbid == MyDatabaseId && slot->key_id == key_id && slot->version == version)
		{
			pg_atomic_write_u64(&slot->count, 0);
			break;
		}
	}
	LWLockRelease(shared->counter_lock);
}

void CounterSubtract(std::uint32_t key_id, std::uint32_t version, std::uint64_t n)
{
	LWLockAcquire(shared->counter_lock, LW_SHARED);
	for (int i = 0; i < shared->slots_used; i++)
	{
		CounterSlot *slot = &shared->slots[i];
		if (slot->dbid == MyDatabaseId && slot->key_id == key_id && slot->version == version)
		{
			pg_atomic_fetch_sub_u64(&slot->count, n);
			break;
		}
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
