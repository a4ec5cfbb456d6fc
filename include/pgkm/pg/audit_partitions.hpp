// The partitions of pgkm.audit_log: made by the worker as records arrive, by a restore as its
// registry rows arrive, dropped by retention; and the guards that keep the log append-only.
#pragma once

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// Makes sure a partition holds written_at: the newest partition, or a new one from its upper
// bound (or the interval's start) to the end of the interval. Needs a catalog session.
void EnsurePartition(TimestampTz written_at);

// Forgets the newest partition's bound, so that the next EnsurePartition reads it again
// (after a failed step whose partition may have been rolled back).
void ForgetPartitionBound();

// Drops a partition and its registry row. Needs a catalog session.
void DropPartition(const char *name);

// Whether a session that loaded restored audit records into this database's empty audit log
// is still connected (it holds the restore lock until it ends): the worker then leaves the
// log alone, rather than continue a chain whose later records are still to come.
bool AuditRestoreInProgress();

// Raises object_not_in_prerequisite_state if this session loaded restored audit records: the
// worker leaves the log alone until the session ends, so a wait for it here would never end.
// For pgkm.audit_flush and the data path under pgkm.audit_durability = sync.
void AuditRefuseWaitWhileRestoring();

} // namespace pgkm::pg
