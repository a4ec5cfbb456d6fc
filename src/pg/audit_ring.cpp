// The audit ring in shared memory: pgkm.audit_ring_size slots, a head (next position to
// write) and a tail (oldest slot not yet free), one lock and one condition variable that
// the worker broadcasts whenever it frees slots.
#include "pgkm/pg/audit_ring.hpp"

#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include "storage/condition_variable.h"
#include "utils/wait_event.h"
}

namespace pgkm::pg
{

namespace
{

enum SlotState : std::uint8_t
{
	kFree,
	kReady,
	kTaken,
};

struct Slot
{
	std::uint64_t pos; // ring position of the entry it holds (0: never used)
	SlotState state;
	AuditEntry entry;
};

// Records dropped per database since its worker last wrote a gap record.
struct DroppedCount
{
	Oid dbid;
	std::uint64_t count;
};
inline constexpr int kDroppedSlots = 64;

// Whether the worker of a database sleeps long (producers must wake it).
struct IdleFlag
{
	Oid dbid;
	bool idle;
};

struct Ring
{
	LWLock *lock;
	IdleFlag idle[kWorkerSlots];
	ConditionVariable freed;
	std::uint64_t head; // next position to write; positions start at 1
	std::uint64_t tail; // oldest position whose slot is not free
	std::uint64_t size;
	DroppedCount dropped[kDroppedSlots];
	Slot slots[FLEXIBLE_ARRAY_MEMBER];
};

constexpr const char *kTranche = "pgkm audit";
Ring *ring = nullptr;

Slot *SlotAt(std::uint64_t pos)
{
	return &ring->slots[pos % ring->size];
}

// Advances the tail over freed slots. Caller holds the lock exclusively.
void AdvanceTail()
{
	while (ring->tail < ring->head && SlotAt(ring->tail)->state == kFree)
		ring->tail++;
}

// Wakes the database's worker when it sleeps long or the ring is a quarter full; a worker
// that drains on its short cadence finds the entry anyway.
void WakeIfNeeded(bool urgent)
{
	bool wake = urgent;
	LWLockAcquire(ring->lock, LW_SHARED);
	if (!wake)
		wake = (ring->head - ring->tail) * 4 >= ring->size;
	for (int i = 0; i < kWorkerSlots && !wake; i++)
		if (ring->idle[i].dbid == MyDatabaseId)
			wake = ring->idle[i].idle;
	LWLockRelease(ring->lock);
	if (wake)
		WorkerWake(MyDatabaseId);
}

// Counts one dropped record of the current database. Caller holds the lock exclusively.
void CountDropped(int n)
{
	DroppedCount *free_slot = nullptr;
	for (auto &d : ring->dropped)
	{
		if (d.dbid == MyDatabaseId)
		{
			d.count += n;
			return;
		}
		if (d.dbid == InvalidOid && free_slot == nullptr)
			free_slot = &d;
	}
	if (free_slot)
	{
		free_slot->dbid = MyDatabaseId;
		free_slot->count = n;
	}
}

} // namespace

Size AuditRingShmemSize()
{
	return MAXALIGN(
		add_size(offsetof(Ring, slots), mul_size(sizeof(Slot), (Size)guc_audit_ring_size)));
}

void AuditRingShmemInit()
{
	bool found;
	ring = static_cast<Ring *>(ShmemInitStruct("pgkm audit ring", AuditRingShmemSize(), &found));
	if (found)
		return;
	memset(ring, 0, AuditRingShmemSize());
	ring->lock = &GetNamedLWLockTranche(kTranche)->lock;
	ConditionVariableInit(&ring->freed);
	ring->head = 1;
	ring->tail = 1;
	ring->size = guc_audit_ring_size;
}

void AuditRingRequestLocks()
{
	RequestNamedLWLockTranche(kTranche, 1);
}

void AuditReportRingFull()
{
	ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_RESOURCES), errmsg("pgkm audit ring is full"),
					errdetail("The operation is refused because its audit record cannot be "
							  "queued (pgkm.audit_overflow = error)."),
					errhint("Check that the pgkm worker of this database runs; raise "
							"pgkm.audit_ring_size.")));
	pg_unreachable();
}

bool AuditMerge(std::uint64_t pos, std::int64_t n, const char *row_context)
{
	if (pos == 0)
		return false;
	bool merged = false;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	Slot *slot = SlotAt(pos);
	if (slot->pos == pos && slot->state == kReady)
	{
		AuditEntry &e = slot->entry;
		std::size_t used = e.row_context_len;
		std::size_t add = row_context ? strlen(row_context) : 0;
		if (used + add + 1 < sizeof(e.row_context))
		{
			if (add > 0)
			{
				char *at = e.row_context + used;
				if (used > 0)
					*at++ = ' ';
				memcpy(at, row_context, add + 1);
				e.row_context_len = (std::uint16_t)(at + add - e.row_context);
			}
			e.row_count += n;
			merged = true;
		}
	}
	LWLockRelease(ring->lock);
	return merged;
}

void AuditWorkerIdle(Oid dbid, bool idle)
{
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	IdleFlag *free_flag = nullptr;
	for (auto &f : ring->idle)
	{
		if (f.dbid == dbid)
		{
			f.idle = idle;
			LWLockRelease(ring->lock);
			return;
		}
		if (f.dbid == InvalidOid && free_flag == nullptr)
			free_flag = &f;
	}
	if (free_flag)
	{
		free_flag->dbid = dbid;
		free_flag->idle = idle;
	}
	LWLockRelease(ring->lock);
}

bool AuditRingHasRoom(int n)
{
	LWLockAcquire(ring->lock, LW_SHARED);
	bool room = ring->head + n - ring->tail <= ring->size;
	LWLockRelease(ring->lock);
	return room;
}

std::uint64_t AuditEnqueue(const AuditEntry *entries, int n, AuditFull full)
{
	if (n <= 0)
		return 0;
	if ((std::uint64_t)n > ring->size)
		full = AuditFull::Drop; // can never fit
	std::uint64_t last = 0;
	bool sleeping = false;
	for (;;)
	{
		LWLockAcquire(ring->lock, LW_EXCLUSIVE);
		if (ring->head + n - ring->tail <= ring->size)
		{
			for (int i = 0; i < n; i++)
			{
				Slot *slot = SlotAt(ring->head);
				slot->pos = ring->head;
				slot->entry = entries[i];
				slot->state = kReady;
				last = ring->head++;
			}
			LWLockRelease(ring->lock);
			break;
		}
		if (full == AuditFull::Drop)
			CountDropped(n);
		LWLockRelease(ring->lock);
		if (full == AuditFull::Drop)
			break;
		if (full == AuditFull::Error)
		{
			if (sleeping)
				ConditionVariableCancelSleep();
			AuditReportRingFull();
		}
		// Wait: the worker frees slots and broadcasts.
		WorkerWake(MyDatabaseId);
		if (!sleeping)
		{
			ConditionVariablePrepareToSleep(&ring->freed);
			sleeping = true;
			continue; // look again before the first sleep
		}
		(void)ConditionVariableTimedSleep(&ring->freed, 1000, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	if (sleeping)
		ConditionVariableCancelSleep();
	WakeIfNeeded(entries[0].kind != AuditKind::Record);
	return last;
}

void AuditWaitDurable(std::uint64_t pos, AuditOutcome *outcome)
{
	if (outcome)
		memset(outcome, 0, sizeof(*outcome));
	if (pos == 0)
		return;
	ConditionVariablePrepareToSleep(&ring->freed);
	for (;;)
	{
		LWLockAcquire(ring->lock, LW_SHARED);
		Slot *slot = SlotAt(pos);
		bool done = slot->pos != pos || slot->state == kFree;
		// A freed slot keeps its entry until the ring wraps around to it.
		if (done && outcome && slot->pos == pos)
		{
			strlcpy(outcome->sqlstate, slot->entry.sqlstate, sizeof(outcome->sqlstate));
			strlcpy(outcome->message, slot->entry.detail, sizeof(outcome->message));
			const char *detail = slot->entry.row_context;
			strlcpy(outcome->detail, detail, sizeof(outcome->detail));
			std::size_t detail_len = strnlen(detail, sizeof(slot->entry.row_context) - 1);
			strlcpy(outcome->hint, detail + detail_len + 1, sizeof(outcome->hint));
		}
		LWLockRelease(ring->lock);
		if (done)
			break;
		WorkerWake(MyDatabaseId);
		(void)ConditionVariableTimedSleep(&ring->freed, 1000, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
}

int AuditTake(Oid dbid, AuditEntry *out, std::uint64_t *positions, int max)
{
	int n = 0;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (std::uint64_t pos = ring->tail; pos < ring->head && n < max; pos++)
	{
		Slot *slot = SlotAt(pos);
		if (slot->state != kReady || slot->entry.dbid != dbid)
			continue;
		out[n] = slot->entry;
		positions[n] = pos;
		slot->state = kTaken;
		n++;
	}
	LWLockRelease(ring->lock);
	return n;
}

void AuditRelease(const std::uint64_t *positions, int n)
{
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		Slot *slot = SlotAt(positions[i]);
		if (slot->pos == positions[i])
			slot->state = kFree;
	}
	AdvanceTail();
	LWLockRelease(ring->lock);
	ConditionVariableBroadcast(&ring->freed);
}

void AuditUntake(const std::uint64_t *positions, int n)
{
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		Slot *slot = SlotAt(positions[i]);
		if (slot->pos == positions[i] && slot->state == kTaken)
			slot->state = kReady;
	}
	LWLockRelease(ring->lock);
}

void AuditReleaseFailed(const std::uint64_t *positions, int n, const char *sqlstate,
						const char *message, const char *detail, const char *hint)
{
	// row_context holds the detail, a NUL, then the hint; each is cut to fit half of it.
	constexpr std::size_t half = sizeof(AuditEntry::row_context) / 2;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		Slot *slot = SlotAt(positions[i]);
		if (slot->pos != positions[i])
			continue;
		AuditEntry &e = slot->entry;
		strlcpy(e.sqlstate, sqlstate, sizeof(e.sqlstate));
		strlcpy(e.detail, message ? message : "", sizeof(e.detail));
		std::size_t detail_len = strlcpy(e.row_context, detail ? detail : "", half);
		detail_len = Min(detail_len, half - 1);
		strlcpy(e.row_context + detail_len + 1, hint ? hint : "", half);
		e.row_context_len = (std::uint16_t)detail_len;
		slot->state = kFree;
	}
	AdvanceTail();
	LWLockRelease(ring->lock);
	ConditionVariableBroadcast(&ring->freed);
}

int AuditDiscard(Oid dbid)
{
	int n = 0;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (std::uint64_t pos = ring->tail; pos < ring->head; pos++)
	{
		Slot *slot = SlotAt(pos);
		if (slot->state != kFree && slot->entry.dbid == dbid)
		{
			slot->state = kFree;
			n++;
		}
	}
	AdvanceTail();
	LWLockRelease(ring->lock);
	ConditionVariableBroadcast(&ring->freed);
	return n;
}

std::uint64_t AuditTakeDropped(Oid dbid)
{
	std::uint64_t n = 0;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	for (auto &d : ring->dropped)
	{
		if (d.dbid == dbid)
		{
			n = d.count;
			d.dbid = InvalidOid;
			d.count = 0;
		}
	}
	LWLockRelease(ring->lock);
	return n;
}

bool AuditPending(Oid dbid)
{
	bool pending = false;
	LWLockAcquire(ring->lock, LW_SHARED);
	for (std::uint64_t pos = ring->tail; pos < ring->head && !pending; pos++)
	{
		Slot *slot = SlotAt(pos);
		pending = slot->state == kReady && slot->entry.dbid == dbid;
	}
	LWLockRelease(ring->lock);
	return pending;
}

} // namespace pgkm::pg
