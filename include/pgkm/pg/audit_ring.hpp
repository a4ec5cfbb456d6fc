// The audit ring: a fixed-size queue in shared memory through which backends hand audit
// records to their database's worker. Producers copy records in under one lock; the worker
// takes its database's records in order, writes them in its own transaction, and frees
// their slots only after that transaction committed, so a producer waiting for durability
// waits exactly until its record is in pgkm.audit_log.
#pragma once

#include <cstdint>

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// What a ring entry asks of the worker.
enum class AuditKind : std::uint8_t
{
	Record,    // an audit record to append
	Flush,     // nothing to append: its durability means every earlier record is durable
	Seal,      // like Flush, and write a checkpoint sealing the chain
	Retention, // like Flush, and apply pgkm.audit_retention now
};

inline constexpr int kAuditNameLen = 64;
inline constexpr int kAuditRowContextToken = 31; // "nonce:" + 24 hex digits + separator
inline constexpr int kAuditRowContexts = 48;     // row contexts one record can carry
inline constexpr int kAuditRowContextLen = kAuditRowContextToken * kAuditRowContexts + 1;

// One audit record as a backend produced it. Strings are NUL-terminated and truncated to
// fit; an empty string stands for NULL.
struct AuditEntry
{
	Oid dbid;
	AuditKind kind;
	bool success;
	bool has_query_id;
	bool has_row_count;
	TimestampTz at;
	std::int32_t pid;
	std::int32_t key_version;      // 0: none
	std::uint16_t row_context_len; // strlen(row_context), kept for AuditMerge
	std::int64_t query_id;
	std::int64_t row_count;
	char session_user[kAuditNameLen];
	char current_user[kAuditNameLen];
	char application_name[kAuditNameLen];
	char client_addr[64];
	char action[24];
	char key_name[kAuditNameLen];
	char relation[2 * kAuditNameLen + 8];
	char column[kAuditNameLen];
	char command[12];
	char row_context[kAuditRowContextLen]; // space-separated 'nonce:<hex>' tokens
	char sqlstate[6];
	char detail[256];
	// A marker the worker failed to serve carries its failure: sqlstate, the message in
	// detail, and the error's detail and hint in row_context, NUL-separated
	// (AuditReleaseFailed).
};

// Shared-memory size, lock request and initialisation, called from shmem.cpp's hooks.
Size AuditRingShmemSize();
void AuditRingRequestLocks();
void AuditRingShmemInit();

// How a producer copes with a full ring (pgkm.audit_overflow, or Drop for records that must
// never block: failure records and the worker's own).
enum class AuditFull
{
	Wait,
	Drop,
	Error,
};

// Copies n entries into the ring, all or none, and wakes the database's worker. Returns
// the ring position of the last entry, or 0 when they were dropped (counted for a gap
// record). With Error, raises an error when the ring is full.
std::uint64_t AuditEnqueue(const AuditEntry *entries, int n, AuditFull full);

// Raises the error of a full ring under pgkm.audit_overflow = error (53000).
[[noreturn]] void AuditReportRingFull();

// Adds n uses (and, if given, one row context) to the entry at position pos, if the worker
// has not taken it yet and it has room; false otherwise (the caller queues a new entry).
// This is how a backend's repeated uses of a statement become one record with a count.
bool AuditMerge(std::uint64_t pos, std::int64_t n, const char *row_context);

// Whether n more entries fit now.
bool AuditRingHasRoom(int n);

// What the worker answered to a marker (Flush, Seal, Retention): an empty sqlstate means
// it did what the marker asked.
struct AuditOutcome
{
	char sqlstate[6];
	char message[256];
	char detail[512];
	char hint[256];
};

// Waits until the entry at position pos has been written and committed by the worker, or,
// for a marker, answered; fills outcome, if given, with the answer.
void AuditWaitDurable(std::uint64_t pos, AuditOutcome *outcome = nullptr);

// Worker side. Copies up to max of this database's ready entries, oldest first, into out and
// their positions into positions, marking them taken. Returns how many.
int AuditTake(Oid dbid, AuditEntry *out, std::uint64_t *positions, int max);
// Frees taken entries after their transaction committed, and wakes waiting producers.
void AuditRelease(const std::uint64_t *positions, int n);
// Puts taken entries back, after their transaction failed.
void AuditUntake(const std::uint64_t *positions, int n);
// Frees taken markers whose work failed (a seal or retention the token refused), leaving the
// failure in their slots for the producers waiting on them: a marker is answered once, never
// retried, so it cannot hold the ring's tail while the token is out.
void AuditReleaseFailed(const std::uint64_t *positions, int n, const char *sqlstate,
						const char *message, const char *detail, const char *hint);
// Frees every entry of a database (its pgkm is gone); returns how many.
int AuditDiscard(Oid dbid);
// Returns and zeroes the count of this database's dropped records.
std::uint64_t AuditTakeDropped(Oid dbid);
// Whether the ring holds ready entries of this database.
bool AuditPending(Oid dbid);

// The worker says whether it is about to sleep long (idle) or drains on a short cadence;
// producers wake it only when it is idle, when the ring fills up, or when they wait.
void AuditWorkerIdle(Oid dbid, bool idle);

} // namespace pgkm::pg
